package kernel

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/raw"
)

// ProbePtraceSeize seizes a helper child, interrupts it, waits for its
// PTRACE_EVENT_STOP, reads its registers, detaches, and ends the child.
//
// Every ptrace request must come from the thread that attached, so the
// whole probe runs on a goroutine locked to its OS thread that never unlocks
// it: the thread exits with the goroutine, which also drops any tracee a
// failed detach left behind.
func ProbePtraceSeize(ctx context.Context) (string, error) {
	type result struct {
		detail string
		err    error
	}
	ch := make(chan result, 1)
	osthread.Go(func() { // see above
		d, err := probePtraceSeize(ctx)
		ch <- result{d, err}
	})
	r := <-ch
	return r.detail, r.err
}

func probePtraceSeize(ctx context.Context) (string, error) {
	h, _, err := startHelper(ctx, "idle")
	if err != nil {
		return "", err
	}
	defer h.kill()
	pid := h.pid()
	if err := unix.PtraceSeize(pid); err != nil {
		return "", unsupported(FeaturePtraceSeize, "PTRACE_SEIZE", err)
	}
	detached := false
	defer func() {
		if !detached {
			unix.PtraceDetach(pid)
		}
	}()
	if err := unix.PtraceInterrupt(pid); err != nil {
		return "", unsupported(FeaturePtraceSeize, "PTRACE_INTERRUPT", err)
	}
	start := time.Now()
	ws, err := waitStop(ctx, pid)
	if err != nil {
		return "", err
	}
	if !ws.Stopped() || ws.StopSignal() != unix.SIGTRAP || ws.TrapCause() != unix.PTRACE_EVENT_STOP {
		return "", unsupported(FeaturePtraceSeize, fmt.Sprintf("PTRACE_INTERRUPT gave wait status %#x, not a PTRACE_EVENT_STOP", uint32(ws)), nil)
	}
	stopped := time.Since(start)
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return "", unsupported(FeaturePtraceSeize, "PTRACE_GETREGS in the stop", err)
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return "", unsupported(FeaturePtraceSeize, "PTRACE_DETACH", err)
	}
	detached = true
	// The helper must run on after the detach: it answers only if it does.
	if err := h.close(); err != nil {
		return "", fmt.Errorf("helper after detach: %w", err)
	}
	return fmt.Sprintf("seized, interrupted (event stop in %s), regs read, detached", roundDuration(stopped)), nil
}

// waitStop waits for a ptrace stop of pid, polling with WNOHANG so that ctx
// can end the wait. It must run on the tracer thread.
func waitStop(ctx context.Context, pid int) (unix.WaitStatus, error) {
	delay := 50 * time.Microsecond
	for {
		var ws unix.WaitStatus
		got, err := raw.IgnoringEINTR2(func() (int, error) { return unix.Wait4(pid, &ws, unix.WALL|unix.WNOHANG, nil) })
		switch {
		case err != nil:
			return 0, fmt.Errorf("wait4 %d: %w", pid, err)
		case got == pid:
			if ws.Exited() || ws.Signaled() {
				return ws, fmt.Errorf("probe child %d ended (wait status %#x) instead of stopping", pid, uint32(ws))
			}
			return ws, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for ptrace stop of %d: %w", pid, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// roundDuration shortens a duration for a detail line.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(10 * time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}
