package source

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

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
				var si [128]byte
				*(*int32)(unsafe.Pointer(&si[0])) = int32(rt)
				*(*int32)(unsafe.Pointer(&si[8])) = -1 // SI_QUEUE
				*(*int32)(unsafe.Pointer(&si[16])) = int32(unix.Getpid())
				*(*int32)(unsafe.Pointer(&si[24])) = 77 // si_value
				if _, _, e := unix.Syscall(unix.SYS_RT_SIGQUEUEINFO, uintptr(p.PID), uintptr(rt), uintptr(unsafe.Pointer(&si[0]))); e != 0 {
					return fmt.Errorf("rt_sigqueueinfo: %w", e)
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
