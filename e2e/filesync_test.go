package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// Files the process writes that the target does not share: B has a
// tmpfs of its own (in its mount namespace) where A has a directory of
// the machine's, at the same path, and the workload on A appends to a log
// there (O_WRONLY|O_APPEND).

// privateDir makes a directory that node B sees as a tmpfs of its own,
// and A (and the machine) as a plain directory: storage B does not
// share.
func privateDir(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	dir := filepath.Join(c.Dir, "private")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := c.B.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs on B: %v: %s", err, out)
	}
	return dir
}

// startAppender starts testdata/appender on A, appending to logf, and
// waits for its first lines.
func startAppender(t *testing.T, c *cluster.Cluster, logf string, args ...string) *cluster.Proc {
	t.Helper()
	p, err := c.A.Start(cluster.StartOptions{}, testutil.Build(t, "appender"), append(args, logf)...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogTick(t, p.Log, 3)
	return p
}

// readOn reads a file as node n sees it.
func readOn(t *testing.T, n *cluster.Node, path string) string {
	t.Helper()
	out, err := n.Command("cat", path).Output()
	if err != nil {
		t.Fatalf("cat %s on %s: %v", path, n, err)
	}
	return string(out)
}

// checkLines checks that log holds "line 1" to "line N" in order, one
// each, and returns N.
func checkLines(t *testing.T, what, log string) int {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	for i, l := range lines {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("%s: line %d is %q, want \"line %d\" (%d lines)", what, i+1, l, i+1, len(lines))
		}
	}
	return len(lines)
}

// TestNodeFilesNotShared: a process appending to a log that B does not
// share is refused before pre-copy, naming the file and the way out
// (shared storage or --sync), and runs on untouched; with --sync of the
// log's directory it moves, and on B it appends to a copy that holds
// what it had written at the freeze, line after line, with no gap and
// nothing twice.
func TestNodeFilesNotShared(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	dir := privateDir(t, c)
	logf := filepath.Join(dir, "app.log")
	// A file of the tree that does not change: sent at the first round
	// only.
	const dataLen = 8 << 20
	data := make([]byte, dataLen)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.bin"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	p := startAppender(t, c, logf, "-m", "32")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, logf) || !strings.Contains(msg, "--sync") || !strings.Contains(msg, "shared storage") {
		t.Errorf("the refusal does not name %s and the way out (shared storage, --sync): %s", logf, msg)
	}
	if res != nil && len(res.Rounds) > 0 {
		t.Errorf("pre-copy ran %d rounds before the refusal", len(res.Rounds))
	}
	if l := onlyCopy(t, c, "appender", p.NSPID, c.A); l.PID != p.PID {
		t.Errorf("the appender on A is pid %d, not the original %d", l.PID, p.PID)
	}
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
	if out, err := c.B.Command("ls", "-A", dir).Output(); err != nil || len(out) != 0 {
		t.Errorf("B's private directory holds something after the refusal: %v %q", err, out)
	}

	res, err = c.Migrate(ctx, c.A, c.B, p.NSPID, "--sync", dir)
	if err != nil {
		t.Fatalf("migrate --sync %s: %v", dir, err)
	}
	t.Logf("migrated with --sync: %d rounds, downtime %.1f ms, %d bytes of files sent", len(res.Rounds), res.DowntimeMS, res.SyncBytes)
	for _, st := range append(res.FrozenSteps, res.TargetSteps...) {
		if st.Name == "synced files" || st.Name == "files written since asked" {
			t.Logf("downtime step %q: %.2f ms", st.Name, st.MS)
		}
	}
	if res.SyncBytes < dataLen || res.SyncBytes > dataLen+1<<20 {
		t.Errorf("%d bytes of files sent in %d rounds for an unchanging %d-byte file and a log", res.SyncBytes, len(res.Rounds), dataLen)
	}
	if got := readOn(t, c.B, filepath.Join(dir, "data.bin")); got != string(data) {
		t.Errorf("data.bin on B differs (%d bytes)", len(got))
	}
	l := onlyCopy(t, c, "appender", p.NSPID, c.B)
	// The original's file as it was at the freeze (nothing wrote it
	// since: the original is gone).
	before := readOn(t, c.A, logf)
	n := checkLines(t, "A's log", before)
	// B's copy goes on from there.
	testutil.WaitFor(t, short, "the process on B to append 20 lines", func() bool {
		return strings.Count(readOn(t, c.B, logf), "\n") > n+20
	})
	after := readOn(t, c.B, logf)
	if !strings.HasPrefix(after, before) {
		t.Fatalf("B's log does not begin with A's log at the freeze (%d bytes, B's %d)", len(before), len(after))
	}
	m := checkLines(t, "B's log", after)
	t.Logf("A's log had %d lines at the freeze, B's has %d (pid %d on B)", n, m, l.PID)
	if out, err := c.B.Command("ls", "-A", dir).Output(); err != nil || strings.Contains(string(out), ".migrate-sync") {
		t.Errorf("staging files left on B: %v %s", err, out)
	}
}

// TestNodeSyncRefused: what B will not write for --sync is refused, the
// migration aborted and the original left running, with nothing written
// on B: a symlink on B where the source has a directory (it would lead
// the copy out of the synced tree), and a file of another user at the
// log's path (it is not taken over).
func TestNodeSyncRefused(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	dir := privateDir(t, c)
	outside := filepath.Join(c.Dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	logf := filepath.Join(dir, "sub", "app.log")
	p := startAppender(t, c, logf)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A tree B shares: copying it would replace the files the original
	// writes; refused before pre-copy.
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID, "--sync", dir, "--sync", outside)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, outside) || !strings.Contains(msg, "shares it") || (res != nil && len(res.Rounds) > 0) {
		t.Errorf("--sync of a shared directory: %s (report %+v)", msg, res)
	}
	for _, tc := range []struct {
		name, setup, want string
	}{
		{"symlink", "ln -s " + outside + " " + dir + "/sub", "is a directory on the source"},
		{"owner", "rm " + dir + "/sub && mkdir " + dir + "/sub && touch " + logf + " && chown 4242:4242 " + logf, "user 4242's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := c.B.Command("sh", "-c", tc.setup).CombinedOutput(); err != nil {
				t.Fatalf("on B: %s: %v %s", tc.setup, err, out)
			}
			res, err := c.Migrate(ctx, c.A, c.B, p.NSPID, "--sync", dir)
			msg := checkFailed(t, res, err)
			t.Logf("migrate: %s", msg)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("the refusal does not say %q: %s", tc.want, msg)
			}
			if l := onlyCopy(t, c, "appender", p.NSPID, c.A); l.PID != p.PID {
				t.Errorf("the appender on A is pid %d, not the original %d", l.PID, p.PID)
			}
			waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("written outside the synced tree, through B's symlink: %v", ents)
			}
			out, err := c.B.Command("sh", "-c", "ls -A "+dir+" "+dir+"/sub/ && stat -c '%u %s' "+dir+"/sub/* 2>/dev/null; true").Output()
			if err != nil || strings.Contains(string(out), ".migrate-sync") {
				t.Errorf("staging files left on B: %v %s", err, out)
			}
			if tc.name == "owner" && !strings.Contains(string(out), "4242 0") {
				t.Errorf("the other user's file on B changed: %s", out)
			}
		})
	}
}

// TestNodeFilesWrittenSinceAsked: a file the process opens for writing
// during pre-copy (its log rotated, by a pre-freeze hook, to a directory
// B does not share) is asked about at the freeze: the migration is
// refused there, naming it, and the original runs on, writing it.
func TestNodeFilesWrittenSinceAsked(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	dir := privateDir(t, c)
	rotated := filepath.Join(dir, "app.log.1")
	p := startAppender(t, c, filepath.Join(c.Dir, "app.log"), "-r", rotated)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rotate := fmt.Sprintf("pre-freeze=kill -USR1 $MIGRATE_PID && until grep -q rotated %s; do sleep 0.01; done", p.Log)
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID, "--hook", rotate)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, rotated) || !strings.Contains(msg, "--sync") {
		t.Errorf("the refusal does not name %s and the way out: %s", rotated, msg)
	}
	if l := onlyCopy(t, c, "appender", p.NSPID, c.A); l.PID != p.PID {
		t.Errorf("the appender on A is pid %d, not the original %d", l.PID, p.PID)
	}
	n := strings.Count(readOn(t, c.A, rotated), "\n")
	testutil.WaitFor(t, short, "the original to write on to the rotated log", func() bool {
		return strings.Count(readOn(t, c.A, rotated), "\n") > n+3
	})
	if out, err := c.B.Command("ls", "-A", dir).Output(); err != nil || len(out) != 0 {
		t.Errorf("B's private directory holds something after the refusal: %v %q", err, out)
	}
}
