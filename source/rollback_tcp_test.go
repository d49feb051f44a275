package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
)

// TestRollbackTCP: a dump that fails once the process's TCP connections
// are in repair mode gives them back to it: repair mode off, the network
// lock gone, the connection carrying bytes both ways as before.
func TestRollbackTCP(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p := testutil.Start(t, testutil.Build(t, "echoserver"), "127.0.0.1", strconv.Itoa(port))
	p.WaitLine(t, short, 0, "ready")
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) error {
		c.SetDeadline(time.Now().Add(short))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != msg {
			return fmt.Errorf("echo %q, want %q", b, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	for _, stage := range []string{stageInjected, stageMemory, stageMeta} {
		injected := fmt.Errorf("failure injected at stage %q", stage)
		_, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: fixtureLogger(t),
			testHook: func(s string) error {
				if s == stage {
					return injected
				}
				return nil
			}})
		if !errors.Is(err, injected) {
			t.Fatalf("dump: %v, want the failure injected at stage %q", err, stage)
		}
		if err := echo("after a dump failed at stage " + stage); err != nil {
			t.Fatalf("the connection after a dump failed at stage %q: %v", stage, err)
		}
	}
}
