package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestHostIPCRefused: a process that used a System V semaphore set or
// message queue of the host's IPC namespace (not carried: which of the
// host's belong to a service cannot be told) is refused naming the
// object, by a dump and by a live migration before any page is sent, and
// runs on untouched.
func TestHostIPCRefused(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	bin := testutil.Build(t, "hostipc")
	sem, err := raw.SemGet(unix.IPC_PRIVATE, 1, unix.IPC_CREAT|0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.SemRemove(sem) })
	msg, err := raw.MsgGet(unix.IPC_PRIVATE, unix.IPC_CREAT|0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.MsgRemove(msg) })
	for _, tc := range []struct {
		kind, what string
		id         int
	}{
		{"sem", "semaphore set", sem},
		{"msg", "message queue", msg},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			p := testutil.Start(t, bin, tc.kind, fmt.Sprint(tc.id))
			p.WaitLine(t, long, 0, "ready")
			check := func(how string, err error) {
				t.Helper()
				var he *source.HostIPCError
				if !errors.As(err, &he) {
					t.Fatalf("%s: %v (%T), want a *source.HostIPCError", how, err, err)
				}
				if he.PID != p.PID || he.ID != tc.id || he.What != tc.what {
					t.Errorf("%s: refused %+v, want process %d, %s %d", how, he, p.PID, tc.what, tc.id)
				}
				t.Logf("%s refused: %v", how, err)
				testutil.RequireRunning(t, p.PID)
				if tp := testutil.StatusField(t, p.PID, "TracerPid"); tp != "0" {
					t.Errorf("%s: TracerPid %s after the refusal", how, tp)
				}
				n := len(p.Lines(t))
				p.WaitLine(t, short, n, "tick ")
			}
			_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
			check("dump", err)
			rounds := 0
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err = source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: addr, Tree: true, Transport: transport.Config{Insecure: true},
				Logger: testLogger(t), Progress: func(source.RoundReport) { rounds++ }})
			check("live migration", err)
			if rounds != 0 {
				t.Errorf("the live migration was refused after %d rounds, not before any", rounds)
			}
		})
	}
}
