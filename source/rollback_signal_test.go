package source

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/internal/testutil"
)

// TestRollbackKeepsSiginfo: a real-time signal sent with sigqueue while the
// process is frozen for a dump that then fails is taken by the dump's
// injected calls (a ptrace signal-delivery stop); the rollback gives it
// back with its siginfo: its handler sees the value and SI_QUEUE, not a
// bare tgkill.
func TestRollbackKeepsSiginfo(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "sigthreads"), filepath.Join(t.TempDir(), "never"))
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 2)
	n := len(p.Lines(t))
	rt := 34 + 2 // SIGRTMIN+2 as glibc numbers it (it keeps 32 and 33)
	injected := errors.New("failure injected after the scratch page")
	_, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: fixtureLogger(t),
		testHook: func(stage string) error {
			switch stage {
			case stageSeized:
				// The main thread does not block it: the kernel queues
				// it for delivery there.
				si := make([]byte, raw.SiginfoSize)
				ne := binary.NativeEndian
				ne.PutUint32(si[0:], uint32(rt))
				ne.PutUint32(si[8:], uint32(0xffffffff)) // SI_QUEUE, -1
				ne.PutUint32(si[16:], uint32(unix.Getpid()))
				ne.PutUint32(si[24:], 77) // si_value
				if err := raw.Sigqueueinfo(p.PID, uint32(rt), si); err != nil {
					return fmt.Errorf("rt_sigqueueinfo: %w", err)
				}
			case stageScratch:
				return injected
			}
			return nil
		}})
	if !errors.Is(err, injected) {
		t.Fatalf("dump: %v, want the injected failure", err)
	}
	got, _ := p.WaitLine(t, short, n, "rt ")
	if want := fmt.Sprintf("rt tid=%d value=77 code=-1", p.PID); got != want {
		t.Errorf("after the rollback the handler saw %q, want %q", got, want)
	}
	for _, l := range p.Lines(t)[n:] {
		if strings.HasPrefix(l, "rt ") && l != got {
			t.Errorf("signal delivered twice: %q", l)
		}
	}
}
