package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
)

// TestTreeTracers: a tree is seized by one tracer thread per CPU (up to
// the processes' number), each process bound to the CPU of its tracer
// while frozen (the injected calls of different tracers go on at the same
// time, and none crosses two CPUs); a failure after the scratch pages
// leaves every process running untraced with its own CPU mask.
func TestTreeTracers(t *testing.T) {
	testutil.RequireRoot(t)
	var own unix.CPUSet
	if err := unix.SchedGetaffinity(0, &own); err != nil {
		t.Fatal(err)
	}
	if own.Count() < 2 {
		testutil.Unavailable(t, "needs 2 CPUs (this process may run on %d)", own.Count())
	}
	cmd := exec.Command("sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The children first, for the shell to reap them.
		kids, _ := childrenOf(cmd.Process.Pid)
		for _, k := range kids {
			unix.Kill(k, unix.SIGKILL)
		}
		testutil.WaitFor(t, short, "the shell to reap its children", func() bool {
			kids, _ := childrenOf(cmd.Process.Pid)
			return len(kids) == 0
		})
		cmd.Process.Kill()
		cmd.Wait()
	})
	var kids []int
	testutil.WaitFor(t, short, "the shell's 3 children", func() bool {
		kids, _ = childrenOf(cmd.Process.Pid)
		return len(kids) == 3
	})
	tree := append([]int{cmd.Process.Pid}, kids...)
	before := map[int]string{}
	for _, pid := range tree {
		before[pid] = testutil.StatusField(t, pid, "Cpus_allowed_list")
	}
	errStop := errors.New("stop at the scratch stage")
	tracerOf := map[int]int{} // process -> tracer thread
	var problems []string
	hook := func(stage string) error {
		if stage != stageScratch {
			return nil
		}
		for _, pid := range tree {
			tid, err := strconv.Atoi(testutil.StatusField(t, pid, "TracerPid"))
			if err != nil || tid == 0 {
				problems = append(problems, fmt.Sprintf("process %d: tracer %q", pid, testutil.StatusField(t, pid, "TracerPid")))
				continue
			}
			tracerOf[pid] = tid
			cpus := testutil.StatusField(t, pid, "Cpus_allowed_list")
			b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
			if err != nil {
				problems = append(problems, fmt.Sprintf("process %d: its tracer thread %d: %v", pid, tid, err))
				continue
			}
			if tcpus := field(string(b), "Cpus_allowed_list"); tcpus != cpus || !single(cpus) {
				problems = append(problems, fmt.Sprintf("process %d runs on CPUs %s, its tracer thread %d on %s: want one, the same", pid, cpus, tid, tcpus))
			}
		}
		return errStop
	}
	_, err := Dump(context.Background(), DumpOptions{PID: cmd.Process.Pid, Dir: t.TempDir(), Tree: true, Logger: fixtureLogger(t), testHook: hook})
	if !errors.Is(err, errStop) {
		t.Fatalf("dump: %v, want the hook's error", err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	tracers := map[int]bool{}
	for _, tid := range tracerOf {
		tracers[tid] = true
	}
	if want := min(own.Count(), len(tree), maxTracers); len(tracers) != want {
		t.Errorf("the tree of %d processes was traced by %d threads %v, want %d (one per CPU)", len(tree), len(tracers), tracerOf, want)
	}
	for _, pid := range tree {
		if got := testutil.StatusField(t, pid, "TracerPid"); got != "0" {
			t.Errorf("process %d: traced by %s after the dump failed", pid, got)
		}
		if got := testutil.StatusField(t, pid, "Cpus_allowed_list"); got != before[pid] {
			t.Errorf("process %d: CPUs %s after the dump failed, %s before", pid, got, before[pid])
		}
		if st := testutil.StatusField(t, pid, "State"); st[0] != 'S' && st[0] != 'R' {
			t.Errorf("process %d: state %s after the dump failed, want it running", pid, st)
		}
	}
}

// field is the value of a "Name:\tvalue" line of a /proc status file.
func field(status, name string) string {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// single says whether a CPU list ("3") names one CPU.
func single(list string) bool {
	_, err := strconv.Atoi(list)
	return err == nil
}

// TestRlimitsFromProc: the resource limits read from /proc/PID/limits are
// those the process itself sees (prlimit64 injected into it), unlimited
// and a soft limit below its hard one included.
func TestRlimitsFromProc(t *testing.T) {
	testutil.RequireRoot(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		testutil.Unavailable(t, "prlimit (util-linux) is needed to start a process with its own limits: %v", err)
	}
	cmd := exec.Command(prlimit, "--nofile=100:200", "--core=4096:unlimited", "--stack=unlimited:unlimited", "--msgqueue=1000:2000", "--", "sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testutil.WaitFor(t, short, "prlimit to exec sleep", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		return err == nil && strings.TrimSpace(string(b)) == "sleep"
	})
	tr := ptrace.NewTracer()
	defer tr.Close()
	p, err := tr.Seize(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	d := &dumper{session: &session{log: fixtureLogger(t), tr: tr}, pid: p.PID, p: p, proc: &core.Process{}}
	err = tr.Do(func() error {
		if err := p.FindGadget(); err != nil {
			return err
		}
		if err := d.mapScratch(); err != nil {
			return err
		}
		defer d.unmapScratch()
		if err := d.collectRlimits(p.Leader()); err != nil {
			return err
		}
		inside, err := d.injectRlimits(p.Leader())
		if err != nil {
			return err
		}
		if !slices.Equal(d.proc.Rlimits, inside) {
			return fmt.Errorf("limits from /proc %+v, from inside %+v", d.proc.Rlimits, inside)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.proc.Rlimits[unix.RLIMIT_NOFILE]; got.Cur != 100 || got.Max != 200 {
		t.Errorf("RLIMIT_NOFILE %+v, want 100/200", got)
	}
	if got := d.proc.Rlimits[unix.RLIMIT_CORE]; got.Cur != 4096 || got.Max != unix.RLIM_INFINITY {
		t.Errorf("RLIMIT_CORE %+v, want 4096/unlimited", got)
	}
}
