package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// attrsWant is what the attrs workload reports of itself on a host with
// ncpu CPUs (see testdata/attrs.c): every value differs from what a fresh
// thread or process has.
func attrsWant(ncpu int, slices bool) []string {
	last := fmt.Sprint(ncpu - 1)
	all := "0"
	if ncpu > 1 {
		all = "0-" + last
	}
	thp := core.THPDisableExceptAdvised
	s0, s2 := 3000000, 5000000
	if !slices {
		s0, s2 = 0, 0
	}
	return []string{
		fmt.Sprintf("P oom=345 cdf=00000023 thp=%d subreaper=1 membarrier=0x14 personality=0x40000 mdwe=1", thp),
		fmt.Sprintf("T0 policy=%d prio=0 rof=0 nice=5 slice=%d cpus=0 slack=123456 pdeath=%d io=0x4001 mce=2 tsc=1", core.SchedBatch, s0, unix.SIGWINCH),
		fmt.Sprintf("T1 policy=%d prio=7 rof=1 nice=-3 slice=0 cpus=%s slack=0 pdeath=%d io=0x6000 mce=1 tsc=1", core.SchedRR, last, unix.SIGURG),
		fmt.Sprintf("T2 policy=%d prio=0 rof=0 nice=7 slice=%d cpus=%s slack=777777 pdeath=0 io=0 mce=0 tsc=2", core.SchedIdle, s2, all),
	}
}

// startAttrs starts the attrs workload and returns it with the state it
// reports once ready; it skips if the kernel refuses SCHED_RR.
func startAttrs(t *testing.T, args ...string) (*testutil.Proc, []string) {
	t.Helper()
	return startAttrsWith(t, testutil.Options{}, args...)
}

// startAttrsWith is startAttrs with options.
func startAttrsWith(t *testing.T, o testutil.Options, args ...string) (*testutil.Proc, []string) {
	t.Helper()
	p := testutil.StartWith(t, o, testutil.Build(t, "attrs"), args...)
	testutil.WaitFor(t, long, "the attrs workload to be ready", func() bool {
		for _, l := range p.Lines(t) {
			if strings.HasPrefix(l, "skip numa") {
				p.Reap(t)
				t.Skipf("this kernel has no NUMA memory policies: %s", l)
			}
			if strings.HasPrefix(l, "skip rt") {
				p.Reap(t)
				t.Skipf("the kernel refuses SCHED_RR here (CAP_SYS_NICE, RLIMIT_RTPRIO or sched_rt_runtime_us): %s", l)
			}
			if strings.HasPrefix(l, "state end") {
				return true
			}
		}
		return false
	})
	st := attrsState(t, testutil.LogLines(t, p.Log), 0)
	ncpu := 1
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if m, err := core.ParseCPUList(string(b)); err == nil {
			ncpu = 0
			for c := 0; c < len(m)*64; c++ {
				if m[c/64]&(1<<(c%64)) != 0 {
					ncpu = c + 1
				}
			}
		}
	}
	// Before Linux 6.12 a thread has no time slice of its own, before
	// 6.18 no THP disable "except advised": the values are then others,
	// and must come back all the same.
	want := attrsWant(ncpu, !strings.Contains(st[1], " slice=0 "))
	if !strings.Contains(st[0], fmt.Sprintf("thp=%d", core.THPDisableExceptAdvised)) {
		want[0] = strings.Replace(want[0], fmt.Sprintf("thp=%d", core.THPDisableExceptAdvised), fmt.Sprintf("thp=%d", core.THPDisableAll), 1)
	}
	if strings.HasSuffix(st[0], " mdwe=-1") { // before Linux 6.3
		want[0] = strings.TrimSuffix(want[0], "1") + "-1"
	}
	if len(args) > 0 {
		return p, st
	}
	if !slices.Equal(st, want) {
		t.Fatalf("the workload set\n%s\nwant\n%s", strings.Join(st, "\n"), strings.Join(want, "\n"))
	}
	return p, st
}

// attrsState returns the state block (the "P" line and the thread lines)
// of the first report at or after line from.
func attrsState(t *testing.T, lines []string, from int) []string {
	t.Helper()
	start := -1
	for i := from; i < len(lines); i++ {
		switch {
		case strings.HasPrefix(lines[i], "P "):
			start = i
		case lines[i] == "state end" && start >= 0:
			return lines[start:i]
		}
	}
	t.Fatalf("no state report after line %d: %q", from, lines[from:])
	return nil
}

// reportAgain asks the workload (pid as this namespace sees it) for its
// state and returns it.
func reportAgain(t *testing.T, log string, pid int) []string {
	t.Helper()
	n := len(testutil.LogLines(t, log))
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, long, "the state report", func() bool {
		return slices.Contains(testutil.LogLines(t, log)[n:], "state end")
	})
	return attrsState(t, testutil.LogLines(t, log), n)
}

// outsideView is what another process reads of pid's threads and of the
// process: the scheduling state of each thread, oom_score_adj and the
// personality.
func outsideView(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		var tid int
		fmt.Sscan(e.Name(), &tid)
		s, err := proc.ReadSched(tid)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%+v", *s))
	}
	for _, f := range []string{"oom_score_adj", "personality"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f+"="+strings.TrimSpace(string(b)))
	}
	return out
}

// TestSchedAttrs: scheduling policy and priority, reset-on-fork, nice, time
// slice, CPU affinity, timer slack, parent-death signal, I/O priority
// (or none), memory-error kill policy and rdtsc mode, each different on three
// threads, and oom_score_adj, coredump_filter, THP disable, child subreaper, membarrier
// registrations and personality of the process come back exactly after a
// dump and restore, as the process reads them of itself and as another
// process reads them. Before they came back as a fresh thread's.
func TestSchedAttrs(t *testing.T) {
	testutil.RequireRoot(t)
	p, before := startAttrs(t)
	outside := outsideView(t, p.PID)
	dir, img := dumpKill(t, p, "")
	if a := img.Process.Attrs; a == nil || a.OOMScoreAdj != 345 || !a.ChildSubreaper || a.Membarrier != 0x14 {
		t.Errorf("image attributes %+v", img.Process.Attrs)
	}
	if s := img.Process.Threads[1].Sched; s == nil || s.Policy != core.SchedRR || s.Priority != 7 || !s.ResetOnFork || s.MCEKill != core.MCEKillEarly {
		t.Errorf("image: thread 1 scheduling %+v", s)
	}
	if s := img.Process.Threads[2].Sched; s == nil || s.MCEKill != core.MCEKillLate || !s.TSCSigsegv {
		t.Errorf("image: thread 2 scheduling %+v, want memory-error policy late and rdtsc faulting", s)
	}
	if s := img.Process.Threads[0].Sched; s == nil || s.MCEKill != 0 || s.TSCSigsegv {
		t.Errorf("image: thread 0 scheduling %+v, want the default memory-error policy and rdtsc", s)
	}
	if a := img.Process.Attrs; a == nil || a.CoredumpFilter == nil || *a.CoredumpFilter != 0x23 {
		t.Errorf("image: coredump filter of %+v, want 0x23", img.Process.Attrs)
	}
	r := restoreOK(t, dir, p.Log)
	after := reportAgain(t, p.Log, r.PID)
	if !slices.Equal(after, before) {
		t.Errorf("after restore the process reads\n%s\nbefore it read\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if got := outsideView(t, r.PID); !slices.Equal(got, outside) {
		t.Errorf("after restore /proc and sched_getattr show\n%s\nbefore\n%s", strings.Join(got, "\n"), strings.Join(outside, "\n"))
	}
	// glibc registers every thread with rseq, with its signature (RSEQ_SIG,
	// 0x53053053 on x86): a restore that registers another makes the
	// kernel kill the thread at the first aborted critical section. A
	// second dump reads the restored registrations.
	for _, th := range img.Process.Threads {
		if th.Rseq.Addr != 0 && th.Rseq.Sig != rseqSigGlibc {
			t.Errorf("image: thread %d rseq signature %#x, glibc registers %#x", th.TID, th.Rseq.Sig, rseqSigGlibc)
		}
	}
	dir2 := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: r.PID, Dir: dir2, LeaveRunning: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the restored process: %v", err)
	}
	img2, err := core.ReadImage(dir2)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(img2.Process.Attrs, img.Process.Attrs) {
		a2, a := *img2.Process.Attrs, *img.Process.Attrs
		a2.CoredumpFilter, a.CoredumpFilter = nil, nil
		t.Errorf("restored process attributes %+v (coredump filter %#x), dumped %+v (%#x)", a2, *img2.Process.Attrs.CoredumpFilter, a, *img.Process.Attrs.CoredumpFilter)
	}
	for i, th := range img.Process.Threads {
		th2 := img2.Process.Threads[i]
		if th2.Rseq != th.Rseq {
			t.Errorf("thread %d: restored rseq registration %+v, dumped %+v", th.TID, th2.Rseq, th.Rseq)
		}
		if a, b := fmt.Sprintf("%+v", *th2.Sched), fmt.Sprintf("%+v", *th.Sched); a != b {
			t.Errorf("thread %d: restored scheduling %s, dumped %s", th.TID, a, b)
		}
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
}

// rseqSigGlibc is glibc's RSEQ_SIG on x86.
const rseqSigGlibc = 0x53053053

// TestLiveSchedAttrs: the same attributes survive a live migration into
// another PID namespace.
func TestLiveSchedAttrs(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	p, before := startAttrs(t)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the original ended with %v, want killed", ws)
	}
	inner := findInNamespace(t, p.PID)
	after := reportAgain(t, p.Log, inner)
	if !slices.Equal(after, before) {
		t.Errorf("after migration the process reads\n%s\nbefore it read\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
}

// TestDumpRefusesDeadline: a thread under SCHED_DEADLINE (a reservation a
// restore does not make) is refused with a *source.BadTargetError naming
// it, before anything is frozen; the process runs on.
func TestDumpRefusesDeadline(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "sleeper"), "pause")
	p.WaitLine(t, short, 0, "sleeping")
	attr := unix.SchedAttr{Policy: 6, Runtime: 1_000_000, Deadline: 10_000_000, Period: 10_000_000}
	if err := unix.SchedSetAttr(p.PID, &attr, 0); err != nil {
		t.Skipf("SCHED_DEADLINE refused here (admission control, cgroup RT runtime): %v", err)
	}
	dir := t.TempDir()
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Logger: testLogger(t)})
	var bt *source.BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID {
		t.Fatalf("dump: %v (%T), want a *source.BadTargetError for process %d", err, err, p.PID)
	}
	if !strings.Contains(bt.Reason, fmt.Sprint(p.PID)) {
		t.Errorf("the refusal does not name the thread: %v", err)
	}
	testutil.RequireRunning(t, p.PID)
	waitPaused(t, p.PID)
	p.Signal(t, unix.SIGUSR1)
	if ws := p.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("the refused process ended with %v, want exit 0", ws)
	}
}

// TestRestoreFailsOOMScoreAdj: an oom_score_adj below the minimum migrate
// may set without CAP_SYS_RESOURCE (an image from a host where it had it)
// fails the restore with a *target.AttrError naming the attribute, and
// leaves nothing behind, rather than give back a process the OOM killer
// treats otherwise. Each of the other values is refused before anything
// is created (core.Validate, TestRestoreRefusesMissingCPUs).
func TestRestoreFailsOOMScoreAdj(t *testing.T) {
	testutil.RequireRoot(t)
	if st, err := proc.ReadStatus(os.Getpid()); err != nil || st.CapEff&(1<<unix.CAP_SYS_RESOURCE) != 0 {
		t.Skipf("migrate has CAP_SYS_RESOURCE here (or its status is unreadable: %v): any oom_score_adj can be set", err)
	}
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "4")
	p.WaitLine(t, short, 0, "ready")
	dir, img := dumpKill(t, p, "")
	editMeta(t, dir, func(m map[string]any) {
		m["process"].(map[string]any)["attrs"].(map[string]any)["oom_score_adj"] = -500
	})
	kids := testutil.Children()
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var ae *target.AttrError
	if !errors.As(err, &ae) || ae.Attr != "oom_score_adj" || ae.Want != "-500" || !errors.Is(err, unix.EACCES) {
		t.Fatalf("restore: %v (%T), want a *target.AttrError for oom_score_adj -500 wrapping EACCES", err, err)
	}
	requireNothingLeft(t, img.Process.PID, kids)
}

// TestDumpRefusesMixedPersonality: threads of one process with different
// personalities (a restore sets one for the process) are refused with a
// *source.BadTargetError naming the thread; the process runs on.
func TestDumpRefusesMixedPersonality(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startAttrs(t, "mixed")
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	var bt *source.BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID || !strings.Contains(bt.Reason, "personality") {
		t.Fatalf("dump: %v (%T), want a *source.BadTargetError about the personality", err, err)
	}
	testutil.RequireRunning(t, p.PID)
	reportAgain(t, p.Log, p.PID)
}

// TestSchedAttrsOtherUser: the same for a process that runs as another
// user (T0 alone: see the note on multi-threaded processes in the
// report): the restore's change of credentials clears a parent-death
// signal set before it, so it must be set after.
func TestSchedAttrsOtherUser(t *testing.T) {
	testutil.RequireRoot(t)
	cwd, err := os.MkdirTemp("", "migrate-cwd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(cwd) })
	if err := os.Chmod(cwd, 0o777); err != nil {
		t.Fatal(err)
	}
	p, before := startAttrsWith(t, testutil.Options{Dir: cwd, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, "user")
	if len(before) != 2 || !strings.Contains(before[1], fmt.Sprintf("pdeath=%d", unix.SIGWINCH)) || !strings.Contains(before[1], "nice=5") {
		t.Fatalf("the workload set\n%s", strings.Join(before, "\n"))
	}
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if got := testutil.StatusField(t, r.PID, "Uid"); !strings.HasPrefix(got, "65534") {
		t.Fatalf("restored process runs as %q", got)
	}
	after := reportAgain(t, p.Log, r.PID)
	if !slices.Equal(after, before) {
		t.Errorf("after restore the process reads\n%s\nbefore it read\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
}

// TestDumpRefusesMemPolicy: a thread with a NUMA memory policy (which a
// restore does not make) is refused with a *source.BadTargetError naming
// it; the process runs on.
func TestDumpRefusesMemPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startAttrs(t, "mempolicy")
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	var bt *source.BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID || !strings.Contains(bt.Reason, "memory policy") {
		t.Fatalf("dump: %v (%T), want a *source.BadTargetError about the memory policy", err, err)
	}
	testutil.RequireRunning(t, p.PID)
	reportAgain(t, p.Log, p.PID)
}

// TestDumpRefusesZeroSlack: a thread of a fair policy with timer slack 0
// (created by a real-time thread: its default is its creator's slack, 0)
// is refused: a restore can write no 0, which means "the default".
func TestDumpRefusesZeroSlack(t *testing.T) {
	testutil.RequireRoot(t)
	p, st := startAttrs(t, "zeroslack")
	if !strings.Contains(st[3], " slack=0 ") {
		t.Fatalf("T2 has a timer slack: %s", st[3])
	}
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	var bt *source.BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID || !strings.Contains(bt.Reason, "timer slack 0") {
		t.Fatalf("dump: %v (%T), want a *source.BadTargetError about the timer slack", err, err)
	}
	testutil.RequireRunning(t, p.PID)
}

// TestDumpRefusesThreadStates: states of a thread or its session that a
// restore does not make, and that no other part of the image reads, are
// refused by name before anything is frozen, the process left running: an
// autogroup with a nice value of its own, an I/O flusher
// (PR_SET_IO_FLUSHER), a core-scheduling cookie (PR_SCHED_CORE).
func TestDumpRefusesThreadStates(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sleeper")
	refused := func(t *testing.T, p *testutil.Proc, what string) {
		t.Helper()
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
		var bt *source.BadTargetError
		if !errors.As(err, &bt) || bt.PID != p.PID || !strings.Contains(bt.Reason, what) {
			t.Fatalf("dump: %v (%T), want a *source.BadTargetError for process %d naming %s", err, err, p.PID, what)
		}
		t.Logf("refused: %v", err)
		checkRunningUntraced(t, p.PID)
		waitPaused(t, p.PID)
		p.Signal(t, unix.SIGUSR1)
		if ws := p.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("the refused process ended with %v, want exit 0", ws)
		}
	}
	t.Run("autogroup nice", func(t *testing.T) {
		// Its own session: its own autogroup, whose nice is its alone.
		p := testutil.StartWith(t, testutil.Options{Setsid: true}, bin, "pause")
		p.WaitLine(t, short, 0, "sleeping")
		path := fmt.Sprintf("/proc/%d/autogroup", p.PID)
		own, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			t.Skipf("autogroups (CONFIG_SCHED_AUTOGROUP: no %s)", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		mine, _ := os.ReadFile("/proc/self/autogroup")
		if f, g := strings.Fields(string(own)), strings.Fields(string(mine)); len(f) == 0 || len(g) == 0 || f[0] == g[0] {
			t.Skipf("an autogroup of a new session's own (kernel.sched_autogroup_enabled=1): it has %q, the test %q", own, mine)
		}
		if err := os.WriteFile(path, []byte("3"), 0); err != nil {
			t.Fatal(err)
		}
		refused(t, p, "autogroup has nice 3")
	})
	for _, tc := range []struct{ mode, what string }{
		{"ioflusher", "I/O flusher"},
		{"corecookie", "core-scheduling cookie"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p := testutil.Start(t, bin, tc.mode)
			testutil.WaitFor(t, short, "the sleeper to start or give up", func() bool {
				for _, l := range p.Lines(t) {
					if strings.HasPrefix(l, "sleeping") || strings.HasPrefix(l, "skip") {
						return true
					}
				}
				return false
			})
			for _, l := range p.Lines(t) {
				if strings.HasPrefix(l, "skip") {
					p.WaitExit(t, short)
					// Not on these machines (no CAP_SYS_RESOURCE, no SMT):
					// a skip that names it, in CI too.
					t.Skipf("%s", strings.TrimPrefix(l, "skip "))
				}
			}
			refused(t, p, tc.what)
		})
	}
}
