package ptrace

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of other processes)")
	}
}

func startChild(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func state(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "gone"
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

func TestInjectGetpid(t *testing.T) {
	needRoot(t)
	if err := ProbeInjection(); err != nil {
		t.Fatal(err)
	}
}

// A thread interrupted in nanosleep must show the restart fix-up and run on
// normally after an injection and a detach.
func TestSeizeSleepingRestart(t *testing.T) {
	needRoot(t)
	cmd := startChild(t, "sleep", "1")
	time.Sleep(100 * time.Millisecond)
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	th := p.Leader()
	if th.Restart != "restart" {
		t.Errorf("thread in nanosleep: Restart=%q, want restart", th.Restart)
	}
	if th.Regs.Rax != unix.SYS_CLOCK_NANOSLEEP && th.Regs.Rax != unix.SYS_NANOSLEEP {
		t.Errorf("rax=%d, want a nanosleep syscall number", th.Regs.Rax)
	}
	if st := state(cmd.Process.Pid); st != "t" {
		t.Errorf("state %q while seized, want t", st)
	}
	if err := p.FindGadget(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Syscall(th, "getppid", unix.SYS_GETPPID); err != nil {
		t.Fatal(err)
	}
	// A failing injected call reports its errno.
	_, err = p.Syscall(th, "close", unix.SYS_CLOSE, 12345)
	if se, ok := err.(*SyscallError); !ok || se.Errno != unix.EBADF {
		t.Fatalf("close(12345): %v, want EBADF", err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	sleepEnds(t, cmd)
}

func TestSeizeMissingAndTraced(t *testing.T) {
	needRoot(t)
	tr := NewTracer()
	defer tr.Close()
	if _, err := tr.Seize(1 << 22); err == nil {
		t.Fatal("seize of a missing pid succeeded")
	}
	cmd := startChild(t, "sleep", "30")
	p, err := tr.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	other := NewTracer()
	defer other.Close()
	// Same process, so TracerPid is us: a plain error rather than TracedError.
	if _, err := other.Seize(cmd.Process.Pid); err == nil {
		t.Fatal("second seize succeeded")
	}
}

// TestSeizeSuspendsSeccomp: a tracer with CAP_SYS_ADMIN seizes with the
// tracee's seccomp filters suspended; one without it (capabilities are
// per thread: the tracer thread drops it from its effective set) still
// seizes, without the suspension, and says so.
func TestSeizeSuspendsSeccomp(t *testing.T) {
	needRoot(t)
	cmd := startChild(t, "sleep", "10")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !p.SeccompSuspended() {
		t.Errorf("seized by root without the seccomp filters suspended")
	}
	if _, _, err := p.SeccompFilter(p.Leader(), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("filter 0 of a thread without seccomp: %v, want EINVAL", err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}

	tr2 := NewTracer()
	defer tr2.Close()
	err = tr2.Do(func() error {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
		return unix.Capset(&hdr, &data[0])
	})
	if err != nil {
		t.Fatalf("drop CAP_SYS_ADMIN on the tracer thread: %v", err)
	}
	p, err = tr2.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatalf("seize without CAP_SYS_ADMIN: %v", err)
	}
	if p.SeccompSuspended() {
		t.Errorf("seccomp suspended by a tracer without CAP_SYS_ADMIN")
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
}

// A process moved to another tracer is that tracer's tracee (TracerPid
// names its thread), takes injections from it, and runs on after its
// detach; the first tracer no longer holds it.
func TestMoveTo(t *testing.T) {
	needRoot(t)
	cmd := startChild(t, "sleep", "1")
	a, b := NewTracer(), NewTracer()
	defer a.Close()
	defer b.Close()
	p, err := a.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.FindGadget(); err != nil {
		t.Fatal(err)
	}
	q, err := p.MoveTo(b)
	if err != nil {
		t.Fatal(err)
	}
	if q.Tracer() != b {
		t.Fatal("moved process does not name the new tracer")
	}
	if got := tracerOf(cmd.Process.Pid); got != b.tid {
		t.Fatalf("TracerPid %d, want the new tracer's thread %d", got, b.tid)
	}
	if st := state(cmd.Process.Pid); st != "t" {
		t.Errorf("state %q after the move, want t", st)
	}
	if pid, err := q.Syscall(q.Leader(), "getpid", unix.SYS_GETPID); err != nil || int(pid) != cmd.Process.Pid {
		t.Fatalf("getpid injected by the new tracer: %d, %v", pid, err)
	}
	// To its own tracer, a move is nothing.
	if _, err := q.MoveTo(b); err != nil {
		t.Fatalf("move to its own tracer: %v", err)
	}
	if err := q.Detach(); err != nil {
		t.Fatal(err)
	}
	sleepEnds(t, cmd)
}

// sleepEnds waits for the sleep of cmd, detached, to end on its own and
// well.
func sleepEnds(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sleep exited with %v after detach", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sleep did not finish after detach")
	}
}

// EachUrgent runs the work of each tracer in SCHED_FIFO and gives the
// tracer thread its class back afterwards; Each leaves the class alone.
func TestEachUrgent(t *testing.T) {
	trs := []*Tracer{NewTracer(), NewTracer()}
	defer trs[0].Close()
	defer trs[1].Close()
	// classes runs each over n items on the two tracers and returns the
	// scheduling class each item's work ran in.
	classes := func(each func(int, func(int) *Tracer, func(int) error) error, n int) []uint32 {
		out := make([]uint32, n)
		err := each(n, func(i int) *Tracer { return trs[i%2] }, func(i int) error {
			a, err := unix.SchedGetAttr(0, 0)
			if err != nil {
				return err
			}
			out[i] = a.Policy
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := classes(EachUrgent, 4)
	if got[0] != unix.SCHED_FIFO {
		// Refused here? Then EachUrgent is Each, which the rest checks.
		err := trs[0].Do(func() error {
			if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: 1}, 0); err != nil {
				return err
			}
			return unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0)
		})
		if err != nil {
			t.Skipf("real-time scheduling is refused here (CAP_SYS_NICE or the cgroup's real-time time): %v", err)
		}
		t.Fatalf("work ran in class %d, want SCHED_FIFO, which the tracer thread may take", got[0])
	}
	for i, c := range got {
		if c != unix.SCHED_FIFO {
			t.Errorf("item %d ran in class %d, want SCHED_FIFO", i, c)
		}
	}
	if got := classes(Each, 2); got[0] != unix.SCHED_NORMAL || got[1] != unix.SCHED_NORMAL {
		t.Errorf("after EachUrgent the tracers run in classes %v, want SCHED_NORMAL back", got)
	}
}
