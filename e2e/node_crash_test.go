package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestNodeSourceKilled: the source's migrate is killed (SIGKILL) after the
// freeze, its state sent, before the commit. The kernel lets the original
// go with its connections in repair mode (silent) and the network lock in
// place; the target aborts the session. The migration's record says what
// happened, and `migrate recover` settles it: the target says "aborted", so
// the original gets its connections back and the lock goes; the client,
// which waited, goes on with every message once, in order.
func TestNodeSourceKilled(t *testing.T) {
	// The killed migrate and the original outlive their nsenter parents:
	// they end up the test's children, to reap once the cluster is gone
	// (this cleanup runs after the cluster's).
	before := testutil.Children()
	t.Cleanup(func() {
		// A node's service, as PID 1 of its namespace, waits in its exit
		// for every process of the namespace to be reaped, the original
		// among them: reap as they come.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			left := 0
			for _, pid := range testutil.Children() {
				if slices.Contains(before, pid) {
					continue
				}
				left++
				syscall.Kill(pid, syscall.SIGKILL)
				var ws syscall.WaitStatus
				syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			}
			if left == 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("children left: %v", testutil.Children())
	})
	c := newCluster(t, cluster.Options{})
	if !c.Hooks {
		t.Skip("migrate takes no --hook")
	}
	bin := testutil.Build(t, "tcpstream")
	args := []string{"9100", "1", "3000", "3000", "1000"}
	srv, err := c.A.Start(cluster.StartOptions{}, bin, append([]string{"server", "0.0.0.0"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, srv.Log, "ready ")
	cli, err := c.Client.Start(cluster.StartOptions{}, bin, append([]string{"client", cluster.VIP.String()}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, srv.Log, "conn 0 recv 300")

	// The records there before: another run's, or another test's left
	// for the same in-node PID, are not this migration's.
	listRecords := func() []string {
		out, err := c.A.Command("sh", "-c", "ls /run/migrate 2>/dev/null; true").CombinedOutput()
		if err != nil {
			t.Fatalf("list /run/migrate: %v %s", err, out)
		}
		return strings.Fields(string(out))
	}
	recordsBefore := listRecords()
	mark := filepath.Join(c.Dir, "post-dump-ran")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := c.StartMigration(ctx, c.A, c.B, srv.NSPID, "-v", "--hook", "post-dump=touch "+mark+"; sleep 20")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, long, "the post-dump hook", func() bool {
		_, err := os.Stat(mark)
		return err == nil
	})
	// The source's migrate: node A's process called migrate that is not
	// its service.
	procs, err := c.A.Find("migrate")
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, p := range procs {
		if p.PID != c.A.ServePID {
			if err := syscall.Kill(p.PID, syscall.SIGKILL); err == nil {
				killed++
			}
		}
	}
	killedAt := time.Now()
	if killed != 1 {
		t.Fatalf("killed %d migrate processes on A (%+v), want the source's one", killed, procs)
	}
	select {
	case <-m.Done():
	case <-time.After(long):
		t.Fatal("migrate did not die")
	}

	// The target gives up on the session; the original stays on A,
	// stopped (the SIGSTOP queued at the freeze): it neither runs twice
	// nor finds its connections silent.
	var loc cluster.Located
	testutil.WaitFor(t, short, "the original, stopped, alone, on A", func() bool {
		locs, err := c.Locate("tcpstream", srv.NSPID)
		if err != nil || len(locs) != 1 || locs[0].Node != c.A {
			return false
		}
		loc = locs[0]
		st, err := testutil.State(loc.PID)
		return err == nil && st == 'T'
	})
	var session string
	prefix := strconv.Itoa(srv.NSPID) + "-"
	after := listRecords()
	for _, f := range after {
		if s, ok := strings.CutPrefix(f, prefix); ok && !slices.Contains(recordsBefore, f) {
			session = strings.TrimSuffix(s, ".json")
		}
	}
	if session == "" {
		t.Fatalf("no new record for pid %d in /run/migrate: %q (before: %q)", srv.NSPID, after, recordsBefore)
	}
	t.Logf("record of session %s (%v after the kill)", session, time.Since(killedAt))
	// The service address: the source's abort hook died with it.
	if err := c.MoveVIP(c.B, c.A); err != nil {
		t.Fatal(err)
	}
	rec := c.A.Command(c.MigrateBin, "recover", "--to", c.B.ServeAddr, "--secret-file", c.SecretFile,
		"--session", session, strconv.Itoa(srv.NSPID))
	got, err := rec.CombinedOutput()
	t.Logf("migrate recover: %v\n%s", err, got)
	if err != nil {
		t.Fatalf("migrate recover: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	st, _ := testutil.State(loc.PID)
	lines := testutil.LogLines(t, srv.Log)
	t.Logf("original after recover: %c; log ends %q", st, lines[max(0, len(lines)-3):])
	if !strings.Contains(string(got), "stale network lock") {
		t.Errorf("recover did not remove the dead migrate's network lock")
	}
	if out, _ := c.A.Command("sh", "-c", "ls /run/migrate").CombinedOutput(); strings.Contains(string(out), session) {
		t.Errorf("the record is still there after recover: %q", out)
	}
	onlyCopy(t, c, "tcpstream", srv.NSPID, c.A)
	if st, err := testutil.State(loc.PID); err != nil || st == 'T' {
		t.Errorf("the original after recover: state %c, %v", st, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, log := range []string{srv.Log, cli.Log} {
				lines := testutil.LogLines(t, log)
				var rl []string
				for _, l := range lines {
					if strings.Contains(l, "recv") || strings.Contains(l, "error") {
						rl = append(rl, l)
					}
				}
				t.Logf("%s ends %q; recv lines %q", log, lines[max(0, len(lines)-4):], rl[max(0, len(rl)-3):])
			}
		}
	})
	for _, log := range []string{srv.Log, cli.Log} {
		waitLogLine(t, log, "all done")
	}
}
