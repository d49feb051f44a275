package migrate_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/internal/testutil"
)

// The examples move real processes: they need root. Elsewhere they are
// left out of the run (an Example with an Output line cannot skip).
func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) != "" {
		os.Exit(serveHelper())
	}
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "not root: the examples, which dump, restore and migrate real processes, are not run")
		flag.Set("test.run", "^Test")
	}
	testutil.Main(m)
}

// serveEnv, set, makes the test binary the serve helper (serveHelper);
// its value is the shared secret.
const serveEnv = "MIGRATE_EXAMPLE_SERVE_SECRET"

// target is a Serve in a PID namespace of its own (a migration on one
// host would find its PID taken): the test binary as PID 1 there.
type target struct {
	Addr string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
}

// startServe starts a Serve on 127.0.0.1 in a PID namespace of its own,
// with auth's secret.
func startServe(auth migrate.Auth) (*target, error) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return nil, fmt.Errorf("unshare (util-linux) is needed for a PID namespace: %w", err)
	}
	cmd := exec.Command(unshare, "--pid", "--fork", "--kill-child", "--mount-proc", os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+string(auth.Secret))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !t.out.Scan() {
		t.Stop()
		return nil, fmt.Errorf("the serve helper did not say where it listens")
	}
	t.Addr = t.out.Text()
	return t, nil
}

// Stop stops the service and returns the kinds of the events it saw.
func (t *target) Stop() []string {
	t.in.Close()
	var kinds []string
	for t.out.Scan() {
		kinds = append(kinds, t.out.Text())
	}
	t.cmd.Wait()
	return kinds
}

// serveHelper serves on 127.0.0.1 until its stdin closes, printing the
// address, then each event's kind.
func serveHelper() int {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	events := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for k := range events {
			fmt.Println(k)
		}
	}()
	err = migrate.Serve(ctx, ln, migrate.ServeOptions{
		Auth:    migrate.Auth{Secret: []byte(os.Getenv(serveEnv))},
		Ready:   func(a net.Addr) { fmt.Println(a) },
		OnEvent: func(e migrate.Event) { events <- e.Kind.String() },
	})
	close(events)
	<-done
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// newSecret makes a shared secret.
func newSecret() []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// startSleep starts /bin/sleep as a child, in a process group of its own,
// stdio on /dev/null.
func startSleep() (*exec.Cmd, error) {
	cmd := exec.Command("/bin/sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, cmd.Start()
}

// kill kills and reaps a restored process (a child of this process, its
// child subreaper).
func kill(pid int) {
	unix.Kill(pid, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
}

func join(kinds []string) string { return strings.Join(kinds, " ") }
