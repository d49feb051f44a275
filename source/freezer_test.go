package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
)

// forkerTree starts the forker workload in a cgroup v2 of its own and
// has it fork n children there: a tree alone in its cgroup.
func forkerTree(t *testing.T, name string, n int) (p *testutil.Proc, dir string) {
	t.Helper()
	testutil.RequireRoot(t)
	dir, _ = testutil.FreezerCgroup(t, name)
	p = testutil.Start(t, testutil.Build(t, "forker"))
	p.WaitLine(t, short, 0, "ready")
	testutil.JoinCgroup(t, dir, p.PID)
	var kids []int
	for range n {
		from := len(p.Lines(t))
		p.Signal(t, unix.SIGUSR1)
		line, _ := p.WaitLine(t, short, from, "forked")
		var kid int
		fmt.Sscanf(line, "forked %d", &kid)
		kids = append(kids, kid)
	}
	// The children die with the forker (PR_SET_PDEATHSIG) and come to
	// this test, a subreaper.
	t.Cleanup(func() {
		p.Stop(t)
		for _, k := range kids {
			testutil.ReapOrphan(t, k)
		}
	})
	return p, dir
}

// requireThawed checks that the cgroup at dir is not frozen.
func requireThawed(t *testing.T, dir string) {
	t.Helper()
	if testutil.CgroupFrozen(t, dir) {
		t.Errorf("cgroup %s is still frozen", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Errorf("cgroup.freeze: %q, %v; want 0", b, err)
	}
}

// requireNoFreezerRecord checks that no record of a cgroup to freeze is
// left.
func requireNoFreezerRecord(t *testing.T) {
	t.Helper()
	if ents, _ := os.ReadDir(frozenRecordDir()); len(ents) != 0 {
		t.Errorf("records of frozen cgroups left: %v", ents)
	}
}

// withRecordDir points RecordDir at a directory of the test.
func withRecordDir(t *testing.T) {
	was := RecordDir
	RecordDir = t.TempDir()
	t.Cleanup(func() { RecordDir = was })
}

// TestFreezeSeizeThaw: a tree alone in its cgroup v2 is frozen by the
// cgroup freezer, every thread of it is then seized and interrupted, and
// the cgroup is thawed: the processes stay stopped by ptrace (state t),
// and run again once let go. With --freeze ptrace, ptrace alone.
func TestFreezeSeizeThaw(t *testing.T) {
	withRecordDir(t)
	p, dir := forkerTree(t, "seize", 3)
	for _, mode := range []FreezeMode{FreezeAuto, FreezeCgroup, FreezePtrace} {
		t.Run(string(mode), func(t *testing.T) {
			ss := &session{opts: DumpOptions{PID: p.PID, Tree: true, Freeze: mode}, log: fixtureLogger(t), tr: ptrace.NewTracer()}
			defer ss.closeTracers()
			if err := ss.prepareFreezer(p.PID); err != nil {
				t.Fatal(err)
			}
			defer ss.freezer.close()
			if (ss.freezer != nil) != (mode != FreezePtrace) {
				t.Fatalf("freezer %v with --freeze %s", ss.freezer, mode)
			}
			all := []*dumper{{session: ss, pid: p.PID}}
			if _, err := freezeTree(context.Background(), ss, &all, nil); err != nil {
				t.Fatal(err)
			}
			want := "cgroup"
			if mode == FreezePtrace {
				want = "ptrace"
			}
			if ss.froze != want {
				t.Errorf("stopped by %q, want %q", ss.froze, want)
			}
			t.Logf("%s: %d processes stopped in %v", ss.froze, len(all), ss.freezeTime)
			if len(all) != 4 {
				t.Errorf("%d processes stopped, want the forker and its 3 children", len(all))
			}
			requireThawed(t, dir)
			for _, d := range all {
				if st, _ := testutil.State(d.pid); st != 't' {
					t.Errorf("process %d in state %c once the cgroup is thawed, want t (ptrace stop)", d.pid, st)
				}
			}
			for _, d := range all {
				if err := d.p.Detach(); err != nil {
					t.Errorf("detach %d: %v", d.pid, err)
				}
			}
			for _, d := range all {
				testutil.RequireRunning(t, d.pid)
			}
			ss.freezer.close()
			requireNoFreezerRecord(t)
			p.WaitTick(t, short, p.LastTick(t)+3)
		})
	}
}

// TestFreezerOutsider: a tree that shares its cgroup with a process not
// of it is not frozen by the cgroup freezer (which would stop the other
// too): --freeze auto dumps it with ptrace alone, --freeze cgroup refuses
// it with a *FreezerError before anything is stopped.
func TestFreezerOutsider(t *testing.T) {
	withRecordDir(t)
	p, dir := forkerTree(t, "outsider", 2)
	other := testutil.Start(t, testutil.Build(t, "counter"))
	other.WaitLine(t, short, 0, "ready")
	testutil.JoinCgroup(t, dir, other.PID)

	_, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, LeaveRunning: true, Freeze: FreezeCgroup, Logger: fixtureLogger(t)})
	var fe *FreezerError
	if !errors.As(err, &fe) || fe.PID != p.PID || !strings.Contains(fe.Reason, fmt.Sprint(other.PID)) {
		t.Fatalf("dump with --freeze cgroup: %v, want a FreezerError naming process %d", err, other.PID)
	}
	t.Logf("refused: %v", err)
	testutil.RequireRunning(t, p.PID)

	rep, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, LeaveRunning: true, Logger: fixtureLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freezer != "ptrace" || rep.Processes != 3 {
		t.Errorf("dump: freezer %q, %d processes; want ptrace, 3", rep.Freezer, rep.Processes)
	}
	requireThawed(t, dir)
	requireNoFreezerRecord(t)
	p.WaitTick(t, short, p.LastTick(t)+3)
	other.WaitTick(t, short, other.LastTick(t)+3)
}

// TestFreezerDump: a dump of a tree alone in its cgroup freezes it with
// the cgroup freezer and thaws it; a dump that fails while the cgroup is
// frozen (an error, its context cancelled as SIGINT to migrate does, a
// panic) thaws it too, and leaves the tree running.
func TestFreezerDump(t *testing.T) {
	withRecordDir(t)
	p, dir := forkerTree(t, "dump", 2)
	rep, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, LeaveRunning: true, Freeze: FreezeCgroup, Logger: fixtureLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freezer != "cgroup" || rep.Processes != 3 {
		t.Errorf("dump: freezer %q, %d processes; want cgroup, 3", rep.Freezer, rep.Processes)
	}
	t.Logf("stopped by %s in %.3f ms", rep.Freezer, rep.FreezeMS)
	requireThawed(t, dir)
	requireNoFreezerRecord(t)
	p.WaitTick(t, short, p.LastTick(t)+3)

	for _, how := range []string{"error", "cancel", "panic"} {
		t.Run(how, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			hooked := false
			opts := DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, LeaveRunning: true, Freeze: FreezeCgroup, Logger: fixtureLogger(t)}
			opts.testHook = func(s string) error {
				if s != stageCgroupFrozen {
					return nil
				}
				hooked = true
				if !testutil.CgroupFrozen(t, dir) {
					t.Errorf("at %s the cgroup is not frozen", s)
				}
				switch how {
				case "cancel":
					cancel()
				case "panic":
					panic("injected")
				}
				return errors.New("injected")
			}
			func() {
				defer func() {
					if r := recover(); r != nil && how != "panic" {
						t.Errorf("panic: %v", r)
					}
				}()
				if _, err := Dump(ctx, opts); err == nil {
					t.Errorf("the dump did not fail")
				}
			}()
			if !hooked {
				t.Fatal("the cgroup freezer was not used")
			}
			requireThawed(t, dir)
			requireNoFreezerRecord(t)
			for _, pid := range append([]int{p.PID}, childrenPIDs(t, p.PID)...) {
				testutil.RequireRunning(t, pid)
				if tr := testutil.StatusField(t, pid, "TracerPid"); tr != "0" {
					t.Errorf("process %d traced by %s after the failed dump", pid, tr)
				}
			}
			p.WaitTick(t, short, p.LastTick(t)+3)
		})
	}
}

func childrenPIDs(t *testing.T, pid int) []int {
	t.Helper()
	kids, err := childrenOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	return kids
}

// TestFreezerThawsOnSeizeError: a seize that fails while the cgroup is
// frozen (a process of the tree traced by another tracer) thaws it.
func TestFreezerThawsOnSeizeError(t *testing.T) {
	withRecordDir(t)
	p, dir := forkerTree(t, "seizeerr", 1)
	kid := childrenPIDs(t, p.PID)[0]
	other := ptrace.NewTracer()
	defer other.Close()
	held, err := other.Seize(kid)
	if err != nil {
		t.Fatal(err)
	}
	ss := &session{opts: DumpOptions{PID: p.PID, Tree: true, Freeze: FreezeCgroup}, log: fixtureLogger(t), tr: ptrace.NewTracer()}
	defer ss.closeTracers()
	if err := ss.prepareFreezer(p.PID); err != nil {
		t.Fatal(err)
	}
	defer ss.freezer.close()
	all := []*dumper{{session: ss, pid: p.PID}}
	if _, err := freezeTree(context.Background(), ss, &all, nil); err == nil {
		t.Fatal("the tree with a traced child was seized")
	} else {
		t.Logf("refused: %v", err)
	}
	requireThawed(t, dir)
	for _, d := range all {
		if d.p != nil {
			d.p.Detach()
		}
	}
	if err := held.Detach(); err != nil {
		t.Fatal(err)
	}
	ss.freezer.close()
	requireNoFreezerRecord(t)
	testutil.RequireRunning(t, kid)
	p.WaitTick(t, short, p.LastTick(t)+3)
}

// TestThawStale: a cgroup that a migrate which died left frozen (its
// record names it) is thawed by the next migrate; one whose migrate
// still runs is left alone.
func TestThawStale(t *testing.T) {
	withRecordDir(t)
	p, dir := forkerTree(t, "stale", 1)
	cgs, err := proc.ReadCgroups(p.PID, p.PID)
	if err != nil {
		t.Fatal(err)
	}
	path := ""
	for _, c := range cgs {
		if c.Controllers == "" {
			path = c.Path
		}
	}
	me, err := proc.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := os.Readlink("/proc/self/ns/cgroup")
	if err := os.MkdirAll(frozenRecordDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(start uint64) string {
		b, _ := json.Marshal(freezerRecord{Owner: os.Getpid(), OwnerStart: start, Cgroup: path, CgroupNS: ns})
		file := filepath.Join(frozenRecordDir(), fmt.Sprintf("%d-%d.json", os.Getpid(), start))
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	freeze := func() {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, short, "the cgroup to freeze", func() bool { return testutil.CgroupFrozen(t, dir) })
	}
	// Its migrate runs (this process): left frozen.
	freeze()
	live := write(me.StartTime)
	ThawStale(fixtureLogger(t))
	if !testutil.CgroupFrozen(t, dir) {
		t.Fatal("a cgroup whose migrate runs was thawed")
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("the record of a running migrate: %v", err)
	}
	os.Remove(live)
	// Its migrate is gone (another start time under its PID): thawed.
	dead := write(me.StartTime + 1)
	ThawStale(fixtureLogger(t))
	requireThawed(t, dir)
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the record of a dead migrate is left: %v", err)
	}
	p.WaitTick(t, short, p.LastTick(t)+3)
}

// FuzzDecodeFreezerRecord: whatever a file under RecordDir/frozen holds,
// decoding it does not panic, and what it accepts names a clean absolute
// cgroup path other than the root.
func FuzzDecodeFreezerRecord(f *testing.F) {
	f.Add([]byte(`{"owner":12,"owner_start":5,"cgroup":"/a/b","cgroup_ns":"cgroup:[4026531835]"}`))
	f.Add([]byte(`{"owner":12,"cgroup":"/a/../b"}`))
	f.Add([]byte(`{"owner":12,"cgroup":"/"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeFreezerRecord(b)
		if err != nil {
			return
		}
		if !filepath.IsAbs(r.Cgroup) || filepath.Clean(r.Cgroup) != r.Cgroup || r.Cgroup == "/" || r.Owner <= 0 {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// TestFreezerStopsChurn: a tree whose processes fork and exit all the
// time (each of 4 children of sh forks a subshell that exits, in a loop)
// is stopped with the cgroup freezer 10 times: every process seized was
// in the cgroup when it froze (none forked between the first stop and
// the last; one exiting then may be gone). A freeze that ran out of
// freezeTimeout falls back to ptrace, as it should: on a host whose CPUs
// are all busy (scripts/stress.sh with 2 CPUs kept busy and other
// packages' tests beside) the churning tasks waited for a CPU longer
// than that once in ten freezes, so up to 30 freezes are made for the
// 10 by the cgroup. With ptrace alone, the
// processes not yet stopped fork on meanwhile (nothing to compare with:
// it stops the tree, 10 times).
//
// A tree that runs programs (sh's vfork of /bin/true) has, frozen, vfork
// parents waiting for children the freezer holds, which no
// PTRACE_INTERRUPT stops: the freeze sees them and stops the tree with
// ptrace alone, and never hangs.
func TestFreezerStopsChurn(t *testing.T) {
	testutil.RequireRoot(t)
	withRecordDir(t)
	for _, tc := range []struct {
		name, script string
		modes        []FreezeMode
	}{
		{"fork", "while :; do ( : ); done", []FreezeMode{FreezeCgroup, FreezePtrace}},
		{"vfork", "while :; do /bin/true; done", []FreezeMode{FreezeAuto}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := testutil.FreezerCgroup(t, "churn-"+tc.name)
			root := shellTree(t, dir, 4, tc.script)
			for _, mode := range tc.modes {
				by := map[string]int{}
				n := 0
				for ; n < 10 || (mode == FreezeCgroup && by["cgroup"] < 10 && n < 30); n++ {
					by[stopChurn(t, root, mode, dir)]++
				}
				if mode == FreezeCgroup && by["cgroup"] < 10 {
					t.Errorf("--freeze cgroup: stopped by %v in %d freezes, want the cgroup freezer 10 times", by, n)
				}
				t.Logf("--freeze %s: stopped by %v (%d freezes)", mode, by, n)
			}
		})
	}
}

// stopChurn stops the tree of root with mode, checks that with the
// cgroup freezer every process seized was in the cgroup (at dir) when it
// froze, and lets the tree go. It returns what stopped the tree.
func stopChurn(t *testing.T, root int, mode FreezeMode, dir string) string {
	t.Helper()
	ss := &session{opts: DumpOptions{PID: root, Tree: true, Freeze: mode}, log: fixtureLogger(t), tr: ptrace.NewTracer()}
	defer ss.closeTracers()
	// As a live migration's: a process that exits as it is stopped is
	// no error.
	ss.regroup = func(context.Context, []*dumper) ([]*dumper, error) { return nil, nil }
	var atFreeze map[int]bool
	ss.opts.testHook = func(stage string) error {
		if stage == stageCgroupFrozen {
			m, err := ss.freezer.procs()
			atFreeze = m
			return err
		}
		return nil
	}
	if err := ss.prepareFreezer(root); err != nil {
		t.Fatal(err)
	}
	all := []*dumper{{session: ss, pid: root}}
	_, err := freezeTree(context.Background(), ss, &all, nil)
	ss.freezer.close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, d := range all {
			if d.p != nil {
				d.p.Detach()
			}
		}
	}()
	requireThawed(t, dir)
	for _, d := range all {
		if d.p != nil && ss.froze == "cgroup" && !atFreeze[d.pid] {
			t.Errorf("process %d was seized but not in the cgroup when it froze: it forked between the stops", d.pid)
		}
	}
	return ss.froze
}

// TestFreezerTimeout: a cgroup that does not say "frozen 1" in time
// (here: no time at all, and processes that spin, which take a while to
// freeze) is thawed, and ptrace alone stops the tree.
func TestFreezerTimeout(t *testing.T) {
	testutil.RequireRoot(t)
	withRecordDir(t)
	was := freezeTimeout
	freezeTimeout = 0
	t.Cleanup(func() { freezeTimeout = was })
	dir, _ := testutil.FreezerCgroup(t, "timeout")
	root := shellTree(t, dir, 4, "while :; do :; done")
	by := map[string]int{}
	for range 5 {
		ss := &session{opts: DumpOptions{PID: root, Tree: true, Freeze: FreezeCgroup}, log: fixtureLogger(t), tr: ptrace.NewTracer()}
		if err := ss.prepareFreezer(root); err != nil {
			t.Fatal(err)
		}
		all := []*dumper{{session: ss, pid: root}}
		_, err := freezeTree(context.Background(), ss, &all, nil)
		ss.freezer.close()
		if err != nil {
			t.Fatal(err)
		}
		requireThawed(t, dir)
		requireNoFreezerRecord(t)
		if len(all) != 5 {
			t.Errorf("%d processes stopped, want sh and its 4 children", len(all))
		}
		for _, d := range all {
			d.p.Detach()
		}
		ss.closeTracers()
		by[ss.froze]++
	}
	if by["ptrace"] == 0 {
		t.Errorf("stopped by %v: the timeout never ran out", by)
	}
	t.Logf("stopped by %v", by)
}
