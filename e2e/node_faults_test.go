package e2e

// Faults across the nodes of a cluster (e2e/cluster): the link to the
// target cut during pre-copy, the target's service killed during pre-copy,
// the process's PID taken on the target, a full disk under `migrate dump`.
// After each, exactly one copy of the process runs: the original, on A,
// untraced and counting on; `migrate` exited 1 and said why; the target
// holds nothing of it; the VIP stayed on A.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// checkFailed checks that a migration failed the way a command should:
// exit status 1, and a last line on stderr "migrate: ..." that says why.
func checkFailed(t *testing.T, res *cluster.Result, err error) string {
	t.Helper()
	var ee *cluster.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("migrate: %v, want a failure (exit status 1); report %+v", err, res)
	}
	msg := cluster.LastLine(ee.Stderr)
	if ee.Code != 1 || !strings.HasPrefix(msg, "migrate: ") {
		t.Errorf("migrate exited %d, saying %q; want status 1 and \"migrate: ...\"", ee.Code, msg)
	}
	return msg
}

// checkOriginalOnA checks that the original p is the one copy, on A,
// running untraced and counting on, that B holds nothing but its service
// (and the processes in keep), and that the VIP is on A.
func checkOriginalOnA(t *testing.T, c *cluster.Cluster, p *cluster.Proc, keep ...int) {
	t.Helper()
	l := onlyCopy(t, c, "counter", p.NSPID, c.A)
	if l.PID != p.PID {
		t.Errorf("the counter on A is pid %d, not the original %d", l.PID, p.PID)
	}
	if !p.Running() {
		t.Fatalf("the original %d is gone: %v", p.PID, p.Err())
	}
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
	checkVIPOn(t, c, c.A)
	// The target discards what it built (a husk, threads) once it sees
	// the session end.
	testutil.WaitFor(t, short, "node B to hold nothing of the migration", func() bool {
		ps, err := c.B.Procs()
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range ps {
			if q.NSPID != 1 && !contains(keep, q.NSPID) {
				return false
			}
		}
		return true
	})
}

func contains(l []int, v int) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// slowMigration starts migrating p from A to B at 20 MB/s (its 64 MiB
// heap then takes seconds to copy) and waits until pre-copy has begun.
func slowMigration(t *testing.T, c *cluster.Cluster, p *cluster.Proc) *cluster.Migration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	m, err := c.StartMigration(ctx, c.A, c.B, p.NSPID, "-vv", "--bandwidth", "20")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitStderr(ctx, `msg="handoff: pre-copy"`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // into round 0
	select {
	case <-m.Done():
		t.Fatalf("the migration ended before the fault: %s", cluster.LastLine(m.Stderr()))
	default:
	}
	return m
}

// TestNodeFaultLinkCut: the link to B is cut (its switch port down) during
// pre-copy. Neither end sees a reset: the source notices the silence
// (keepalive), rolls back and exits 1; B discards its husk.
func TestNodeFaultLinkCut(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p := nodeCounter(t, c.A, "-m", "64")
	m := slowMigration(t, c, p)
	cut := time.Now()
	if err := c.CutLink(c.B); err != nil {
		t.Fatal(err)
	}
	res, err := m.Wait()
	msg := checkFailed(t, res, err)
	t.Logf("migrate gave up %v after the cut: %s", time.Since(cut).Round(time.Millisecond), msg)
	if err := c.RestoreLink(c.B); err != nil {
		t.Fatal(err)
	}
	checkOriginalOnA(t, c, p)
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// TestNodeFaultAgentKilled: B's service is killed during pre-copy (and
// with it the husk it was building); the source sees the connection
// reset, rolls back and exits 1. A new service on B then takes the same
// process.
func TestNodeFaultAgentKilled(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p := nodeCounter(t, c.A, "-m", "64")
	m := slowMigration(t, c, p)
	killed := time.Now()
	if err := c.B.KillServe(); err != nil {
		t.Fatal(err)
	}
	res, err := m.Wait()
	msg := checkFailed(t, res, err)
	t.Logf("migrate gave up %v after the kill: %s", time.Since(killed).Round(time.Millisecond), msg)
	if err := c.B.StartServe(); err != nil {
		t.Fatal(err)
	}
	checkOriginalOnA(t, c, p)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if res, err := c.Migrate(ctx, c.A, c.B, p.NSPID); err != nil || res.Outcome != "resumed" {
		t.Fatalf("migration to the new service: %v (%+v)", err, res)
	}
	onlyCopy(t, c, "counter", p.NSPID, c.B)
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
	checkVIPOn(t, c, c.B)
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// TestNodeFaultPIDTaken: the process's PID is taken on B (a sleep placed
// there): the service refuses the session before the source freezes
// anything; migrate exits 1 naming the PID; the sleep is left alone.
func TestNodeFaultPIDTaken(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p := nodeCounter(t, c.A)
	squat, err := c.B.Start(cluster.StartOptions{PID: p.NSPID}, "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, fmt.Sprint(p.NSPID)) {
		t.Errorf("the error does not name the PID %d: %s", p.NSPID, msg)
	}
	checkRefusedPIDInUse(t, res)
	checkOriginalOnA(t, c, p, squat.NSPID)
	if !squat.Running() {
		t.Errorf("the process holding the PID on B is gone: %v", squat.Err())
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 5)
}

// checkRefusedPIDInUse checks that a migration's report says it was
// refused for a PID taken on the target, before anything was frozen.
func checkRefusedPIDInUse(t *testing.T, res *cluster.Result) {
	t.Helper()
	if res.Refused != "pid-in-use" {
		t.Errorf("refused %q (error %q), want pid-in-use", res.Refused, res.Error)
	}
	for _, r := range res.Rounds {
		if r.Frozen {
			t.Errorf("round %d ran frozen before the refusal", r.Round)
		}
	}
}

// TestNodeFaultTreePIDTaken: a tree that is not a container (a shell and
// the counter it started) whose child's PID is taken on B is refused at
// the first layout (only a container's PIDs outside may be others there),
// before anything is frozen; the tree runs on, on A.
func TestNodeFaultTreePIDTaken(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p, err := c.A.Start(cluster.StartOptions{}, "sh", "-c", `"$0" & wait`, testutil.Build(t, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	waitLogTick(t, p.Log, 3)
	kids := childrenOf(t, p.PID)
	if len(kids) != 1 {
		t.Fatalf("the shell %d has children %v", p.PID, kids)
	}
	levels := strings.Fields(testutil.StatusField(t, kids[0], "NSpid"))
	child, _ := strconv.Atoi(levels[len(levels)-1])
	squat, err := c.B.Start(cluster.StartOptions{PID: child}, "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, fmt.Sprint(child)) {
		t.Errorf("the error does not name the PID %d: %s", child, msg)
	}
	checkRefusedPIDInUse(t, res)
	onlyCopy(t, c, "counter", child, c.A)
	checkRunningUntraced(t, kids[0])
	checkNodeEmpty(t, c.B, squat.NSPID)
	if !squat.Running() {
		t.Errorf("the process holding the PID on B is gone: %v", squat.Err())
	}
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 5)
}

// TestNodeDumpDiskFull: `migrate dump --dir` on A into a 1 MiB tmpfs
// (mounted in A's mount namespace only) fails with ENOSPC: exit 1, a
// message that says so, no image left, and the process runs on.
func TestNodeDumpDiskFull(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p := nodeCounter(t, c.A, "-m", "16")
	mnt := filepath.Join(c.Dir, "small")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := c.A.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs on A: %v: %s", err, out)
	}
	dir := filepath.Join(mnt, "img")
	out, err := c.A.Command(c.MigrateBin, "dump", "--dir", dir, fmt.Sprint(p.NSPID)).CombinedOutput()
	msg := cluster.LastLine(string(out))
	t.Logf("migrate dump: %v: %s", err, msg)
	if code := exitCode(err); code != 1 || !strings.HasPrefix(msg, "migrate: dump: ") || !strings.Contains(msg, "no space left on device") {
		t.Errorf("migrate dump on a full disk exited %d saying %q; want status 1 and the reason (ENOSPC)", code, msg)
	}
	// No image (image.json is written last), nothing but what A sees.
	if out, err := c.A.Command("sh", "-c", "test ! -e "+dir+"/image.json && df -k "+mnt+" | tail -1").CombinedOutput(); err != nil {
		t.Errorf("an image was left in %s: %v %s", dir, err, out)
	} else {
		t.Logf("A's tmpfs after the dump: %s", strings.TrimSpace(string(out)))
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Errorf("the tmpfs mounted on A shows outside A: %v", ents)
	}
	checkOriginalOnA(t, c, p)
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 5)
}

// exitCode returns the exit status of a command's error (0 if nil, -1 if
// it did not exit).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// TestNodeFaultAfterFreeze: the migration fails after the freeze, once
// the source's post-dump hook took the VIP off A: an extra post-dump hook
// of the operator fails (exit 1). The source rolls back, its abort hook
// puts the VIP back on A, where the client reaches it again, and the
// target's abort hook leaves B without it.
//
// (Killing B's service at that point instead leaves the original frozen:
// the target's "ready" was already read, the commit's send then fails,
// and the source, which does not decide once a commit was attempted,
// asks the gone target for two minutes, then leaves it to `migrate
// recover`.)
func TestNodeFaultAfterFreeze(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	if !c.Hooks {
		t.Skip("migrate takes no --hook: nothing takes the VIP off A at the freeze")
	}
	ask := nameServers(t, c)
	p := nodeCounter(t, c.A, "-m", "16")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The cluster's own post-dump hook runs first (the flags' order).
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID, "-v", "--hook", "post-dump=echo failing post-dump hook >&2; exit 1")
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(res.Stderr, "stage=post-dump") || !strings.Contains(res.Stderr, "stage=abort") {
		t.Errorf("migrate's log does not show its post-dump and abort hooks:\n%s", res.Stderr)
	}
	checkOriginalOnA(t, c, p)
	for _, vip := range []string{c.VIP.String(), c.VIP6.String()} {
		if got, err := ask(vip); err != nil || got != "a" {
			t.Errorf("after the rollback, the VIP %s answers %q, %v; want a", vip, got, err)
		}
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 5)
}
