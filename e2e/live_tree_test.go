package e2e

// Process trees moved by a live migration (issue 13): the root and its
// descendants are tracked, sent and frozen together, and come up in the
// service's PID namespace with their PIDs, parents, process groups and
// sessions, and the fds they share.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// nsIDs is where a process stands in its tree, as the innermost PID
// namespace sees it: its PID, parent, process group and session there.
type nsIDs struct{ pid, ppid, pgid, sid int }

// innerIDs reads nsIDs of the process that is pid here (status: NSpid,
// NSpgid, NSsid; the parent's NSpid through PPid).
func innerIDs(t testing.TB, pid int) nsIDs {
	t.Helper()
	last := func(pid int, field string) int {
		f := strings.Fields(testutil.StatusField(t, pid, field))
		if len(f) == 0 {
			t.Fatalf("process %d: no %s", pid, field)
		}
		n, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("process %d: %s %q", pid, field, f)
		}
		return n
	}
	ids := nsIDs{pid: last(pid, "NSpid"), pgid: last(pid, "NSpgid"), sid: last(pid, "NSsid")}
	if pp := last(pid, "PPid"); pp > 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pp)); err == nil {
			ids.ppid = last(pp, "NSpid")
		}
	}
	return ids
}

// preforkWorkers returns the workers prog_prefork's ready line names,
// sorted.
func preforkWorkers(t testing.TB, ready string) []int {
	t.Helper()
	var workers []int
	for _, f := range strings.Split(field(t, ready, "workers"), ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		workers = append(workers, n)
	}
	slices.Sort(workers)
	return workers
}

// askPrefork connects to prog_prefork at addr and returns its answer.
func askPrefork(t testing.TB, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, short)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(short))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return string(b)
}

// pingPrefork makes prog_prefork pr ping its 3 workers (generation gen)
// and waits for every pong.
func pingPrefork(t testing.TB, pr *testutil.Proc, gen int) {
	t.Helper()
	n := len(pr.Lines(t))
	pr.Signal(t, unix.SIGUSR1)
	for w := range 3 {
		pr.WaitLine(t, short, n, fmt.Sprintf("pong %d gen=%d", w, gen))
	}
}

// TestLiveTreePrefork: a pre-fork server (a parent in a session of its
// own and 3 workers sharing its listening socket and pipes) moves live as
// one tree: in the service's namespace the 4 processes have their PIDs,
// the workers the parent as theirs, all the parent's process group and
// session; the listener is one socket shared by the four; new connections
// are served, every worker answers a ping through its pipe, and nothing
// of the tree is left on this side.
func TestLiveTreePrefork(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	port := freeSocketPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := testutil.StartWith(t, testutil.Options{Setsid: true}, testutil.Build(t, "prog_prefork"), fmt.Sprint(port))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	workers := preforkWorkers(t, ready)
	t.Cleanup(func() {
		for _, w := range workers {
			testutil.ReapOrphan(t, w)
		}
	})
	ask := func() string { return askPrefork(t, addr) }
	for range 20 {
		if got := ask(); !strings.HasPrefix(got, "worker ") {
			t.Fatalf("answer %q", got)
		}
	}
	pings := func(pr *testutil.Proc, gen int) { pingPrefork(t, pr, gen) }
	pings(p, 1)
	for _, pid := range append([]int{p.PID}, workers...) {
		waitSockets(t, pid, 1)
	}
	before := map[int]nsIDs{}
	for _, pid := range append([]int{p.PID}, workers...) {
		before[pid] = innerIDs(t, pid)
	}

	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true})
	t.Logf("tree of %d processes moved live: downtime %.1f ms (target's %.1f ms), total %.1f ms; source frozen steps %v, handoff %v, target steps %v",
		rep.Processes, rep.DowntimeMS, rep.TargetDowntimeMS, rep.TotalMS, rep.FrozenSteps, rep.Handoff, rep.TargetSteps)
	if rep.Processes != 4 {
		t.Errorf("report: %d processes, want 4", rep.Processes)
	}
	// Where the frozen window went for each process: the root first.
	if len(rep.ProcessSteps) != 4 || rep.ProcessSteps[0].PID != p.PID {
		t.Errorf("report: steps of processes %+v, want the root's and its 3 workers'", rep.ProcessSteps)
	}
	for _, ps := range rep.ProcessSteps {
		if !slices.ContainsFunc(ps.Steps, func(s source.Step) bool { return s.Name == "injected: brk, signal actions, itimers" && s.MS > 0 }) {
			t.Errorf("report: process %d's steps %+v, without the time of its signal actions", ps.PID, ps.Steps)
		}
	}
	// The original workers died with the tree: reparented to this test (a
	// subreaper), they are reaped here; none runs.
	for _, w := range workers {
		testutil.ReapOrphan(t, w)
		if st, err := testutil.State(w); err == nil {
			t.Errorf("the original worker %d is left (state %c)", w, st)
		}
	}
	var outer []int
	for _, w := range workers {
		o := findInNamespace(t, w)
		checkRunningUntraced(t, o)
		outer = append(outer, o)
	}
	if got := childrenOf(t, r.PID); !slices.Equal(got, outer) {
		t.Errorf("children of the migrated parent %v, want the migrated workers %v", got, outer)
	}
	for i, pid := range append([]int{p.PID}, workers...) {
		o := r.PID
		if i > 0 {
			o = outer[i-1]
		}
		got, want := innerIDs(t, o), before[pid]
		want.ppid = got.ppid // the root's parent is the service now
		if i > 0 {
			want.ppid = before[pid].ppid
		}
		if got != want {
			t.Errorf("process %d in the service's namespace: %+v, want %+v", pid, got, want)
		}
	}
	l0 := fdTarget(t, r.PID, 3)
	for _, o := range outer {
		if l := fdTarget(t, o, 3); l != l0 || !strings.HasPrefix(l, "socket:") {
			t.Errorf("migrated worker %d fd 3 is %s, the parent's %s: not one shared socket", o, l, l0)
		}
	}
	checkSoleListener(t, r.PID, port)
	for range 40 {
		if got := ask(); !strings.HasPrefix(got, "worker ") {
			t.Fatalf("answer after the migration %q", got)
		}
	}
	pings(r, 2)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGTERM)
	if bye, _ := r.WaitLine(t, short, n, "bye"); bye != "bye reaped=3" {
		t.Errorf("%q, want the migrated parent to reap its 3 workers", bye)
	}
	logHasFail(t, r)
}

// startParentChild starts the workload name (shmtree, shmdirty: a parent
// that says "ready ... child=C" once its child runs), waits for its third
// tick, and returns it with its child's PID; a cleanup kills the parent
// and reaps the child (which dies with it, or was killed by a migration).
func startParentChild(t *testing.T, name string, args ...string) (*testutil.Proc, int) {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, name), args...)
	ready, _ := p.WaitLine(t, long, 0, "ready")
	child, err := strconv.Atoi(field(t, ready, "child"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(t)
		testutil.ReapOrphan(t, child)
	})
	p.WaitTick(t, long, 3)
	return p, child
}

// TestLiveTreeSharedMemory: a parent and a child that talk through
// shared anonymous memory (shmtree) move live: the sharing holds on the
// target (every tick after the migration gets its answer), and the child
// is the parent's there.
func TestLiveTreeSharedMemory(t *testing.T) {
	testutil.RequireRoot(t)
	// With each tracker this kernel has: a page of the shared memory is
	// written through one process's page tables, read through both.
	for _, tracker := range []string{source.TrackerUffdWP, source.TrackerSoftDirty, source.TrackerHash} {
		t.Run(tracker, func(t *testing.T) { testLiveTreeSharedMemory(t, tracker) })
	}
}

func testLiveTreeSharedMemory(t *testing.T, tracker string) {
	trackerWorks(t, tracker)
	s := startServeWith(t, serveOptions{})
	p, child := startParentChild(t, "shmtree")
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true, Tracker: tracker})
	t.Logf("tree of %d processes moved live: downtime %.1f ms, total %.1f ms", rep.Processes, rep.DowntimeMS, rep.TotalMS)
	if rep.Tracker != tracker {
		t.Errorf("tracker %s, want %s", rep.Tracker, tracker)
	}
	testutil.ReapOrphan(t, child)
	if st, err := testutil.State(child); err == nil {
		t.Errorf("the original child %d is left (state %c)", child, st)
	}
	oc := findInNamespace(t, child)
	checkRunningUntraced(t, oc)
	if got := childrenOf(t, r.PID); !slices.Equal(got, []int{oc}) {
		t.Errorf("children of the migrated parent %v, want [%d]", got, oc)
	}
	last := r.LastTick(t)
	r.WaitTick(t, long, last+20)
	for _, l := range r.Lines(t) {
		if strings.HasSuffix(l, " stale") {
			t.Fatalf("%q: parent and child no longer share their memory", l)
		}
	}
}

// TestLiveTreeFork: a process forked into the tree while pre-copy runs
// moves with it: found at the next round's layout (it joins, with all
// its memory) or at the freeze (it joins in the frozen window); on the
// target it is the root's child, with its PID, and runs.
func TestLiveTreeFork(t *testing.T) {
	testutil.RequireRoot(t)
	// The child forks after the first round, found by the next round;
	// or just before the freeze (the pre-freeze hook), after the last
	// round read the tree: the freeze finds it.
	for _, atFreeze := range []bool{false, true} {
		name := "at a round"
		if atFreeze {
			name = "at the freeze"
		}
		t.Run(name, func(t *testing.T) { testLiveTreeFork(t, atFreeze) })
	}
}

// TestLiveTreeRefusedInFlight: a child of the tree opens an fd that
// cannot move (a pty master) just before the freeze (the pre-freeze hook,
// after the precheck looked): the frozen window's read phase refuses it
// with the final round in flight (it starts as soon as the layouts are
// read, before the fds). The round is stopped and waited for before the
// rollback: the tree runs on untouched (maps, fds and signal state as at
// the freeze), untraced, and the target has nothing left.
func TestLiveTreeRefusedInFlight(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, kids := startForker(t, 1)
	child := kids[0]
	pty := -1
	var before []*testutil.Snapshot
	o := source.MigrateOptions{PID: p.PID, To: s.Addr, Tree: true, Transport: transport.Config{Insecure: true},
		Logger: testLogger(t), Policy: faultPolicy}
	o.Hooks, _ = hook.Parse(nil, hook.Source)
	o.Hooks.AddFunc(hook.PreFreeze, "pty", func(context.Context, map[string]string) error {
		n := len(p.Lines(t))
		if err := unix.Kill(child, unix.SIGUSR2); err != nil {
			return err
		}
		line, _ := p.WaitLine(t, short, n, fmt.Sprintf("pty %d ", child))
		pty, _ = strconv.Atoi(field(t, line, "fd"))
		before = []*testutil.Snapshot{testutil.Take(t, p.PID), testutil.Take(t, child)}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	rep, err := source.Migrate(ctx, o)
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != child || ue.FD != pty {
		t.Fatalf("migration: %v (%T), want an *source.UnsupportedFDError for fd %d of process %d", err, err, pty, child)
	}
	t.Logf("refused: %v", err)
	if rep != nil && rep.Outcome == "resumed" {
		t.Fatalf("report of a refused migration: %+v", rep)
	}
	for i, pid := range []int{p.PID, child} {
		checkRunningUntraced(t, pid)
		if diff := before[i].Diff(testutil.Take(t, pid), 1, 2); diff != "" {
			t.Errorf("process %d changed across the refused migration:\n%s", pid, diff)
		}
	}
	p.WaitTick(t, short, p.LastTick(t)+5)
	checkNoCopyOnTarget(t, s)
}

// startForker starts forker with n children, and a cleanup that reaps
// them (they die with their parent, PR_SET_PDEATHSIG, and come to this
// test, a subreaper). It returns the children's PIDs.
func startForker(t *testing.T, n int) (*testutil.Proc, []int) {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "forker"))
	p.WaitLine(t, short, 0, "ready")
	var kids []int
	for range n {
		kids = append(kids, forkOne(t, p))
	}
	t.Cleanup(func() {
		p.Stop(t)
		for _, k := range kids {
			testutil.ReapOrphan(t, k)
		}
	})
	return p, kids
}

// forkOne makes forker p fork a child and returns its PID.
func forkOne(t *testing.T, p *testutil.Proc) int {
	t.Helper()
	n := len(p.Lines(t))
	p.Signal(t, unix.SIGUSR1)
	line, _ := p.WaitLine(t, short, n, "forked ")
	kid, err := strconv.Atoi(strings.TrimPrefix(line, "forked "))
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	return kid
}

// TestLiveTreeExit: a process of the tree that exits while pre-copy runs
// (here a child killed after the first round, left a zombie by its
// parent) leaves the pre-copy and moves as the zombie it is: on the
// target it is the root's zombie child, with its PID, and the other
// child runs.
func TestLiveTreeExit(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, kids := startForker(t, 2)
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true,
		Policy: source.Policy{MaxRounds: 4, TargetDowntime: 0, MinShrink: 0, Patience: 3},
		Progress: func(rr source.RoundReport) {
			if rr.Round == 0 && !rr.Frozen {
				unix.Kill(kids[1], unix.SIGKILL)
				testutil.Poll(short, func() bool {
					st, err := testutil.State(kids[1])
					return err != nil || st == 'Z'
				})
			}
		},
	})
	checkZombieMoved(t, r, rep, kids)
}

// TestLiveTreeZombie: a tree with a zombie its parent has not reaped yet
// moves with it: on the target the zombie is there, the parent's child,
// with its PID, and the live child runs.
func TestLiveTreeZombie(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, kids := startForker(t, 2)
	unix.Kill(kids[1], unix.SIGKILL)
	testutil.WaitFor(t, short, "the child to be a zombie", func() bool {
		st, err := testutil.State(kids[1])
		return err == nil && st == 'Z'
	})
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true})
	checkZombieMoved(t, r, rep, kids)
}

// checkZombieMoved checks the tree of forker r (rep: its migration) whose
// second child of kids was a zombie at the freeze: on the target the
// zombie is there, the parent's child, with its PID, and the live child
// runs.
func checkZombieMoved(t *testing.T, r *testutil.Proc, rep *source.MigrateReport, kids []int) {
	t.Helper()
	if rep.Processes != 3 {
		t.Errorf("report: %d processes, want 3", rep.Processes)
	}
	for _, k := range kids {
		testutil.ReapOrphan(t, k)
	}
	live, zombie := findInNamespace(t, kids[0]), findInNamespace(t, kids[1])
	checkRunningUntraced(t, live)
	if st, err := testutil.State(zombie); err != nil || st != 'Z' {
		t.Errorf("the migrated zombie %d: state %c, %v", zombie, st, err)
	}
	if got, want := childrenOf(t, r.PID), []int{min(live, zombie), max(live, zombie)}; !slices.Equal(got, want) {
		t.Errorf("children of the migrated parent %v, want %v", got, want)
	}
	r.WaitTick(t, short, r.LastTick(t)+5)
}

func testLiveTreeFork(t *testing.T, atFreeze bool) {
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, testutil.Build(t, "forker"))
	p.WaitLine(t, short, 0, "ready")
	var kids []int
	t.Cleanup(func() {
		// The children die with their parent (PR_SET_PDEATHSIG), and
		// come to this test (a subreaper) to be reaped.
		p.Stop(t)
		for _, k := range kids {
			testutil.ReapOrphan(t, k)
		}
	})
	// Without Tree a process with a child is refused, before anything
	// is done.
	kids = append(kids, forkOne(t, p))
	_, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: s.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t)})
	var bt *source.BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID {
		t.Fatalf("migrate without Tree of a process with a child: %v (%T), want a *source.BadTargetError", err, err)
	}
	checkRunningUntraced(t, p.PID)
	var forked int
	fork := func() {
		n := len(p.Lines(t))
		unix.Kill(p.PID, unix.SIGUSR1)
		var line string
		testutil.Poll(short, func() bool {
			for _, l := range p.Lines(t)[n:] {
				if strings.HasPrefix(l, "forked ") {
					line = l
					return true
				}
			}
			return false
		})
		forked, _ = strconv.Atoi(strings.TrimPrefix(line, "forked "))
	}
	o := source.MigrateOptions{Tree: true,
		// Never converged (no downtime to fit in): a few rounds.
		Policy: source.Policy{MaxRounds: 3, TargetDowntime: 0, MinShrink: 0, Patience: 3}}
	if atFreeze {
		o.Hooks, _ = hook.Parse(nil, hook.Source)
		o.Hooks.AddFunc(hook.PreFreeze, "fork", func(context.Context, map[string]string) error { fork(); return nil })
	} else {
		o.Progress = func(rr source.RoundReport) {
			if rr.Round == 0 && !rr.Frozen {
				fork()
			}
		}
	}
	r, rep := migrateLive(t, p, s, o)
	if forked == 0 {
		t.Fatal("no child forked during the pre-copy")
	}
	kids = append(kids, forked)
	if rep.Processes != 3 {
		t.Errorf("report: %d processes, want 3", rep.Processes)
	}
	for _, k := range kids {
		testutil.ReapOrphan(t, k)
		if st, err := testutil.State(k); err == nil {
			t.Errorf("the original child %d is left (state %c)", k, st)
		}
	}
	var want []int
	for _, k := range kids {
		c := findInNamespace(t, k)
		checkRunningUntraced(t, c)
		if ids := innerIDs(t, c); ids.ppid != p.PID {
			t.Errorf("migrated child %d: parent %d, want %d", k, ids.ppid, p.PID)
		}
		want = append(want, c)
	}
	slices.Sort(want)
	if got := childrenOf(t, r.PID); !slices.Equal(got, want) {
		t.Errorf("children of the migrated parent %v, want %v", got, want)
	}
	r.WaitTick(t, short, r.LastTick(t)+5)
}

// TestLiveProgramNginx: nginx as Debian runs it (Debian's nginx-light: a
// master as root and 2 workers as www-data, sharing the listening socket,
// the master's socketpairs and shared memory) moves live under a client
// that fetches a file in a loop: every request is answered, before,
// during and after; in the service's namespace the master and the workers
// have their PIDs, the workers their user, and the master's children are
// the workers.
func TestLiveProgramNginx(t *testing.T) {
	testutil.RequireRoot(t)
	bin := requireNginx(t)
	srv := startServeWith(t, serveOptions{})
	body := strings.Repeat("moved live with its workers\n", 1000)
	port := freeSocketPort(t)
	work := nginxSite(t, body, fmt.Sprintf("127.0.0.1:%d", port), "")
	p := testutil.StartWith(t, testutil.Options{Dir: work}, bin, "-p", work, "-e", filepath.Join(work, "error.log"), "-c", filepath.Join(work, "nginx.conf"))
	var workers []int
	testutil.WaitFor(t, long, "nginx's 2 workers", func() bool {
		workers = childrenOf(t, p.PID)
		return len(workers) == 2
	})
	t.Cleanup(func() {
		// The workers outlive a killed master: they come to this test
		// (a subreaper), which kills and reaps them.
		p.Stop(t)
		for _, w := range workers {
			testutil.ReapOrphan(t, w)
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", port)
	// A new connection each request: each goes to whichever worker
	// accepts it.
	client := &http.Client{Timeout: long, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || string(b) != body {
			return fmt.Errorf("status %s, %d bytes", resp.Status, len(b))
		}
		return nil
	}
	testutil.WaitFor(t, long, "nginx to answer", func() bool { return get() == nil })
	// Each worker as it serves: past its switch to the worker user (a
	// worker that has not answered yet may still be root).
	users := map[int]string{}
	for _, w := range workers {
		testutil.WaitFor(t, long, fmt.Sprintf("worker %d to leave root", w), func() bool {
			return testutil.StatusField(t, w, "Uid") != testutil.StatusField(t, p.PID, "Uid")
		})
		users[w] = testutil.StatusField(t, w, "Uid")
	}
	// The client fetches on through the migration.
	stop := make(chan struct{})
	type result struct {
		n    int
		errs []error
	}
	done := make(chan result)
	go func() {
		var res result
		for {
			select {
			case <-stop:
				done <- res
				return
			default:
			}
			res.n++
			if err := get(); err != nil {
				res.errs = append(res.errs, err)
			}
		}
	}()
	r, rep := migrateLive(t, p, srv, source.MigrateOptions{Tree: true})
	close(stop)
	res := <-done
	t.Logf("nginx (master and %d workers) moved live: downtime %.1f ms (target's %.1f ms), total %.1f ms; %d requests during, %d failed; source frozen steps %v, handoff %v",
		len(workers), rep.DowntimeMS, rep.TargetDowntimeMS, rep.TotalMS, res.n, len(res.errs), rep.FrozenSteps, rep.Handoff)
	for _, err := range res.errs {
		t.Errorf("a request during the migration: %v", err)
	}
	if rep.Processes != 3 {
		t.Errorf("report: %d processes, want 3", rep.Processes)
	}
	var outer []int
	for _, w := range workers {
		testutil.ReapOrphan(t, w)
		o := findInNamespace(t, w)
		checkRunningUntraced(t, o)
		if got := testutil.StatusField(t, o, "Uid"); got != users[w] {
			t.Errorf("worker %d runs as %q, before as %q", w, got, users[w])
		}
		outer = append(outer, o)
	}
	slices.Sort(outer)
	if got := childrenOf(t, r.PID); !slices.Equal(got, outer) {
		t.Errorf("children of the migrated master %v, want the migrated workers %v", got, outer)
	}
	checkSoleListener(t, r.PID, port)
	for range 20 {
		if err := get(); err != nil {
			t.Fatalf("a request after the migration: %v", err)
		}
	}
}

// TestLiveTreeFaults: the faults of TestLiveFaults that leave the source
// to learn the outcome, with a tree (shmtree: a parent and a child sharing
// memory): exactly one copy of the whole tree runs afterwards.
//
//   - the connection cut when the target is ready, before the commit: the
//     source learns the session was aborted and resumes the original
//     tree, both processes, untraced, still sharing their memory; nothing
//     runs on the target;
//   - the commit delivered, the answer lost, the connection cut: the
//     source learns the tree runs on the target and kills the original,
//     child and parent.
func TestLiveTreeFaults(t *testing.T) {
	testutil.RequireRoot(t)
	for _, at := range []string{atReady, atCommit} {
		t.Run(at+"/"+doCut, func(t *testing.T) { runLiveTreeFault(t, at) })
	}
}

func runLiveTreeFault(t *testing.T, at string) {
	s := startServeWith(t, serveOptions{})
	px := startProxy(t, s.Addr)
	p, child := startParentChild(t, "shmtree")
	g := newGate(t)
	o := source.MigrateOptions{PID: p.PID, To: px.Addr(), Tree: true, Transport: transport.Config{Insecure: true}, Policy: faultPolicy}
	switch at {
	case atReady:
		o.Logger = hookLogger(t, func(msg string) {
			if msg == "handoff: commit" {
				g.reach()
			}
		})
	case atCommit:
		o.Logger = cutAfterCommit(t, px)
	}
	m := startMigration(o)
	if at == atReady {
		m.waitGate(t, g, s, "the fault point "+at)
		px.Cut()
		g.open()
	}
	m.wait(t, s)
	noStale := func(pr *testutil.Proc) {
		t.Helper()
		pr.WaitTick(t, long, pr.LastTick(t)+10)
		for _, l := range pr.Lines(t) {
			if strings.HasSuffix(l, " stale") {
				t.Fatalf("%q: parent and child no longer share their memory", l)
			}
		}
	}
	switch at {
	case atReady:
		he := checkHandoffError(t, m.err, "")
		if !strings.Contains(he.Err.Error(), "aborted") {
			t.Errorf("the source resumed the original without the target's word that the session was aborted: %v", he.Err)
		}
		checkRunningUntraced(t, p.PID)
		checkRunningUntraced(t, child)
		noStale(p)
		checkNoCopyOnTarget(t, s)
	case atCommit:
		if m.err != nil || m.rep.Outcome != "resumed" {
			t.Fatalf("migration: %+v, %v; want resumed, learnt by asking", m.rep, m.err)
		}
		if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
			t.Errorf("the original ended with %v, want killed", ws)
		}
		testutil.ReapOrphan(t, child)
		if st, err := testutil.State(child); err == nil {
			t.Errorf("the original child %d is left (state %c)", child, st)
		}
		r := migrated(findInNamespace(t, p.PID), p.Log)
		oc := findInNamespace(t, child)
		got := nsProcs(t, s)
		slices.Sort(got)
		if want := []int{min(r.PID, oc), max(r.PID, oc)}; !slices.Equal(got, want) {
			t.Errorf("processes in the target's namespace: %v, want only the migrated tree, %v", got, want)
		}
		noStale(r)
	}
}

// TestLiveTreeRecover: the source's migrate killed with the tree frozen
// (in its post-dump hook) leaves every process of the tree stopped, and
// its record names them all: `migrate recover`, told by the target that
// the session was aborted, lets the whole tree run on, the child too.
func TestLiveTreeRecover(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, child := startParentChild(t, "shmtree")
	mark := filepath.Join(t.TempDir(), "post-dump-ran")
	before := testutil.Children()
	m := exec.Command(buildMigrate(t), "--to", s.Addr, "--insecure", "-v", "--hook", "post-dump=touch "+mark+"; exec sleep 20", strconv.Itoa(p.PID))
	var out strings.Builder
	m.Stdout, m.Stderr = &out, &out
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Process.Kill()
		m.Wait()
		if t.Failed() {
			t.Logf("migrate:\n%s", out.String())
		}
	})
	testutil.WaitFor(t, long, "the post-dump hook", func() bool {
		_, err := os.Stat(mark)
		return err == nil
	})
	if err := m.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	// Its hook, orphaned, comes to this test (a subreaper).
	for _, pid := range testutil.Children() {
		if !slices.Contains(before, pid) && pid != m.Process.Pid {
			testutil.ReapOrphan(t, pid)
		}
	}
	// Let go by the kernel, each process meets the SIGSTOP queued at the
	// freeze.
	for _, pid := range []int{p.PID, child} {
		testutil.WaitFor(t, short, fmt.Sprintf("process %d stopped", pid), func() bool {
			st, err := testutil.State(pid)
			return err == nil && st == 'T'
		})
	}
	var rec *source.Record
	testutil.WaitFor(t, short, "the record of the migration", func() bool {
		rs, _ := source.StaleRecords()
		for i := range rs {
			if rs[i].PID == p.PID {
				rec = &rs[i]
			}
		}
		return rec != nil
	})
	if len(rec.Tree) != 1 || rec.Tree[0].PID != child {
		t.Errorf("the record's tree %+v, want the child %d", rec.Tree, child)
	}
	got, err := source.Recover(context.Background(), s.Addr, rec.Session, p.PID, transport.Config{Insecure: true}, testLogger(t))
	if err != nil || got != transport.OutcomeAborted.String() {
		t.Fatalf("recover: %q, %v; want aborted", got, err)
	}
	for _, pid := range []int{p.PID, child} {
		checkRunningUntraced(t, pid)
	}
	p.WaitTick(t, long, p.LastTick(t)+10)
	for _, l := range p.Lines(t) {
		if strings.HasSuffix(l, " stale") {
			t.Fatalf("%q: parent and child no longer share their memory", l)
		}
	}
	checkNoCopyOnTarget(t, s)
}

// TestLiveTreeSharedMemoryExact: a parent and a child keep rewriting one
// shared anonymous region (shmdirty: the parent its even pages, the child
// its odd ones) while pre-copy sends it in several rounds, each process
// its own page stream: after the migration each finds every page it
// wrote as it wrote it last, whichever stream and round carried it.
func TestLiveTreeSharedMemoryExact(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, child := startParentChild(t, "shmdirty", "32", "40")
	// Several rounds: a downtime target no final round meets.
	pol := source.Policy{MaxRounds: 4, TargetDowntime: time.Microsecond, MinShrink: 0, Patience: 4}
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true, Policy: pol})
	t.Logf("tree of %d processes moved live in %d rounds: downtime %.1f ms, total %.1f ms", rep.Processes, len(rep.Rounds), rep.DowntimeMS, rep.TotalMS)
	testutil.ReapOrphan(t, child)
	oc := findInNamespace(t, child)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	if err := unix.Kill(oc, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"parent", "child"} {
		line, _ := r.WaitLine(t, long, n, "verify "+who)
		if !strings.HasPrefix(line, "verify "+who+" ok") {
			t.Errorf("the shared memory after the migration: %s", line)
		}
	}
	r.WaitTick(t, long, r.LastTick(t)+3)
}

// TestLiveTreeChurn: a tree whose root forks short-lived children all
// the time (treechurn: each writes memory of its own and the root's,
// copied on write, checks it before each rewrite, and exits), with
// keepers that stay, one forked during the pre-copy, moves live: the
// target's tree is the source's at the freeze. Each process of it
// carries on there: a keeper says it is alive, a short-lived child ends
// its checks, a zombie is reaped by the root with its exit status; no
// process finds its memory changed; the target has no process the root
// did not fork there; nothing of the tree runs here. With "no pause" the
// root forks as fast as it can: the tree changes at the very moment of
// the freeze.
func TestLiveTreeChurn(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		pause string // treechurn's PAUSE_MS
		pol   source.Policy
	}{
		{"rounds", "2", source.Policy{MaxRounds: 5, TargetDowntime: 0, MinShrink: 0, Patience: 4}},
		{"default policy", "2", source.Policy{}},
		{"no pause", "0", source.Policy{}},
		// Throttled (the processes stopped for a growing share of each
		// round), the tree changing all the same.
		{"auto-converge", "2", source.Policy{MaxRounds: 3, TargetDowntime: time.Millisecond, MinShrink: 0.2, Patience: 1, AutoConverge: true}},
	} {
		t.Run(tc.name, func(t *testing.T) { testLiveTreeChurn(t, tc.pause, tc.pol) })
	}
}

// churnMember is a process of a tree at the freeze.
type churnMember struct {
	ppid   int
	zombie bool
}

// treeNow lists root's descendants (host PIDs) with their parents and
// whether each is a zombie.
func treeNow(root int) map[int]churnMember {
	out := map[int]churnMember{root: {}}
	todo := []int{root}
	for len(todo) > 0 {
		pid := todo[0]
		todo = todo[1:]
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
			for _, f := range strings.Fields(string(b)) {
				kid, _ := strconv.Atoi(f)
				st, err := testutil.State(kid)
				if err != nil {
					continue
				}
				out[kid] = churnMember{ppid: pid, zombie: st == 'Z'}
				todo = append(todo, kid)
			}
		}
	}
	return out
}

// reapChurn reaps the treechurn processes that are children of this
// test now (their root gone, they came to the test, a subreaper): those
// its root logged, and those it forked but could not log (killed or
// frozen for good between fork and its line).
func reapChurn(t *testing.T) {
	t.Helper()
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "treechurn" {
				testutil.ReapOrphan(t, pid)
			}
		}
	}
}

func testLiveTreeChurn(t *testing.T, pause string, pol source.Policy) {
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, testutil.Build(t, "treechurn"), pause)
	t.Cleanup(func() {
		// The children die with the root (PR_SET_PDEATHSIG), and come to
		// this test (a subreaper) to be reaped.
		p.Stop(t)
		reapChurn(t)
	})
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, long, 3)
	unix.Kill(p.PID, unix.SIGUSR2)
	p.WaitLine(t, short, 0, "keeper ")
	var (
		frozen    map[int]churnMember // the tree at the freeze
		linesThen int                 // the lines written before the freeze
	)
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true, Policy: pol,
		Progress: func(rr source.RoundReport) {
			if rr.Round == 0 && !rr.Frozen {
				unix.Kill(p.PID, unix.SIGUSR2) // a keeper joins
			}
		},
		Notify: func(m source.Milestone) {
			if m.Kind == source.MilestoneFrozen {
				frozen, linesThen = treeNow(p.PID), len(p.Lines(t))
			}
		},
	})
	if rep.Processes != len(frozen) {
		t.Errorf("report: %d processes, the tree had %d at the freeze", rep.Processes, len(frozen))
	}
	var zombies, live int
	for _, m := range frozen {
		if m.zombie {
			zombies++
		} else {
			live++
		}
	}
	t.Logf("the tree at the freeze: %d processes running, %d zombies; %d lines before; frozen steps %v; target steps %v",
		live, zombies, linesThen, rep.FrozenSteps, rep.TargetSteps)
	// Nothing of it runs here.
	reapChurn(t)
	for pid := range frozen {
		if st, err := testutil.State(pid); err == nil {
			t.Errorf("process %d of the original tree is left (state %c)", pid, st)
		}
	}
	keepers := map[int]bool{}
	for _, l := range p.Lines(t) {
		if s, ok := strings.CutPrefix(l, "keeper "); ok {
			k, _ := strconv.Atoi(s)
			keepers[k] = true
		}
	}
	// After the freeze, on the target: each process of the tree at the
	// freeze carries on.
	after := func(prefix string) int {
		var idx int
		if !testutil.Poll(long, func() bool {
			for i, l := range r.Lines(t)[linesThen:] {
				if strings.HasPrefix(l, prefix) {
					idx = linesThen + i
					return true
				}
			}
			return false
		}) {
			// What the tree said since the freeze, and what runs of it.
			var procs []string
			if ps, err := os.ReadDir("/proc"); err == nil {
				for _, e := range ps {
					comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
					if pid, err := strconv.Atoi(e.Name()); err == nil && strings.TrimSpace(string(comm)) == "treechurn" {
						st, _ := testutil.State(pid)
						procs = append(procs, fmt.Sprintf("%d %c", pid, st))
					}
				}
			}
			t.Fatalf("no line %q within %v of the migration; the tree's log since the freeze:\n%s\ntreechurn processes: %v",
				prefix, long, strings.Join(r.Lines(t)[linesThen:], "\n"), procs)
		}
		return idx
	}
	for pid, m := range frozen {
		switch {
		case pid == p.PID:
			r.WaitTick(t, long, r.LastTick(t)+3)
		case m.zombie:
			// Its exit status is the one its parent gets there.
			after(fmt.Sprintf("reaped %d status=%d", pid, (pid&0x7f)<<8))
		case keepers[pid]:
			after(fmt.Sprintf("alive pid=%d ", pid))
			if ids := innerIDs(t, findInNamespace(t, pid)); ids.ppid != p.PID {
				t.Errorf("keeper %d: parent %d there, want %d", pid, ids.ppid, p.PID)
			}
		default:
			// Its "done" may have been written just before the freeze
			// took it between that write and its exit: it says it once,
			// before or after; its exit, seen by its parent, comes after.
			if !slices.ContainsFunc(r.Lines(t)[:linesThen], func(l string) bool {
				return strings.HasPrefix(l, fmt.Sprintf("done pid=%d ", pid))
			}) {
				after(fmt.Sprintf("done pid=%d ", pid))
			}
			after(fmt.Sprintf("reaped %d status=%d", pid, (pid&0x7f)<<8))
		}
	}
	// No process the root did not fork there (after the freeze).
	// (The root logs a child once fork returns: a child may run before
	// its line is written.)
	forkedSince := func(inner int) bool {
		for _, l := range r.Lines(t)[linesThen:] {
			if l == fmt.Sprintf("forked %d", inner) || l == fmt.Sprintf("keeper %d", inner) {
				return true
			}
		}
		return false
	}
	for _, c := range childrenOf(t, r.PID) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c))
		if err != nil {
			continue // exited since (and reaped by the root)
		}
		var inner int
		for _, l := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
				ids := strings.Fields(f)
				inner, _ = strconv.Atoi(ids[len(ids)-1])
			}
		}
		if _, ok := frozen[inner]; ok {
			continue
		}
		if !testutil.Poll(short, func() bool { return forkedSince(inner) }) {
			t.Errorf("process %d (%d there) runs on the target: not of the tree at the freeze, nor forked since", c, inner)
		}
	}
	lines := r.Lines(t)
	for _, l := range lines {
		if strings.HasPrefix(l, "corrupt") || strings.HasPrefix(l, "FAIL") {
			t.Errorf("%q", l)
		}
	}
}

// TestLiveTreeChurnRollback: a migration of a churning tree that fails
// after the freeze (a post-dump hook that fails: processes joined during
// pre-copy and at the freeze) leaves the original tree running as it was:
// every process of it untraced, with no userfaultfd of the tracking left
// in it, each keeper still finding its memory as it wrote it; the target
// keeps nothing.
func TestLiveTreeChurnRollback(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, testutil.Build(t, "treechurn"), "0")
	t.Cleanup(func() {
		p.Stop(t)
		reapChurn(t)
	})
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, long, 3)
	hooks, err := hook.Parse(nil, hook.Source)
	if err != nil {
		t.Fatal(err)
	}
	errHook := errors.New("the test's post-dump hook fails")
	hooks.AddFunc(hook.PostDump, "fail", func(context.Context, map[string]string) error { return errHook })
	_, err = source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: s.Addr, Tree: true, Transport: transport.Config{Insecure: true}, Logger: testLogger(t), Hooks: hooks,
		Policy: source.Policy{MaxRounds: 3, TargetDowntime: 0, MinShrink: 0, Patience: 3},
		Progress: func(rr source.RoundReport) {
			if rr.Round == 0 && !rr.Frozen {
				unix.Kill(p.PID, unix.SIGUSR2) // a keeper joins
			}
		},
	})
	if !errors.Is(err, errHook) {
		t.Fatalf("migrate: %v, want the hook's error", err)
	}
	n := len(p.Lines(t))
	p.WaitTick(t, long, p.LastTick(t)+5)
	// The root and the keepers (the short-lived children may be gone
	// as they are looked at).
	stay := []int{p.PID}
	for _, l := range p.Lines(t) {
		if k, ok := strings.CutPrefix(l, "keeper "); ok {
			pid, _ := strconv.Atoi(k)
			stay = append(stay, pid)
		}
	}
	if len(stay) < 2 {
		t.Fatal("no keeper was forked during the pre-copy")
	}
	for _, pid := range stay {
		if tr := testutil.StatusField(t, pid, "TracerPid"); tr != "0" {
			t.Errorf("process %d of the tree is still traced by %s", pid, tr)
		}
		for fd, f := range testutil.FDs(t, pid) {
			if strings.Contains(f.Target, "userfaultfd") {
				t.Errorf("process %d of the tree has a userfaultfd left at fd %d", pid, fd)
			}
		}
	}
	p.WaitLine(t, long, n, fmt.Sprintf("alive pid=%d ", stay[1]))
	for _, l := range p.Lines(t) {
		if strings.HasPrefix(l, "corrupt") || strings.HasPrefix(l, "FAIL") {
			t.Errorf("%q", l)
		}
	}
	checkNoCopyOnTarget(t, s)
}

// requireNginx returns Debian's nginx, or skips naming what is missing
// (nginx-light, or the user www-data its workers run as).
func requireNginx(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			testutil.Unavailable(t, "nginx (Debian package nginx-light) is not installed: %v", err)
		}
	}
	if _, err := user.Lookup("www-data"); err != nil {
		testutil.Unavailable(t, "no user www-data (Debian's base-passwd makes it): %v", err)
	}
	return bin
}

// nginxSite makes a directory www-data can read (t.TempDir's parent is
// root's alone) with www/index.html holding body and nginx.conf: a master
// and 2 workers as www-data, in the foreground, listening on listen, with
// the http block's extra directives.
func nginxSite(t *testing.T, body, listen, extra string) string {
	t.Helper()
	work, err := os.MkdirTemp("", "migrate-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(work, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "www", "index.html"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`user www-data;
worker_processes 2;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
	access_log off;
	%[3]s
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s;
		root %[1]s/www;
	}
}
`, work, listen, extra)
	if err := os.WriteFile(filepath.Join(work, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return work
}
