package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestContainerLiveChurn moves a container whose tree changes all the
// time (treechurn as its init: a short-lived child every 2 ms, keepers
// forked while the migration runs) from node A to node B and back: each
// process forked during pre-copy joins with its PID inside (the layout
// gives it: the target forks it out of its parent with both PIDs), each
// that exits leaves or moves as a zombie, and on the target every
// process of the tree as it was frozen carries on, finding its memory as
// it wrote it.
func TestContainerLiveChurn(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	unshare, _ := containerArgs(t, "churn", nil, nil)
	p, err := c.A.Start(cluster.StartOptions{}, unshare, "--pid", "--fork", "--uts", "--ipc", testutil.Build(t, "treechurn"), "2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	logLineFrom(t, p.Log, 0, "ready")
	waitLogTick(t, p.Log, 3)
	init := onlyChild(t, p.PID)
	unix.Kill(init, unix.SIGUSR2)
	logLineFrom(t, p.Log, 0, "keeper ")
	nodePID := nodePIDOf(t, init)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	changed := 0 // hops whose pre-copy saw the tree change
	for _, hop := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := hop[0], hop[1]
		// Keepers join while pre-copy runs (treechurn forks 8 at most).
		stop := make(chan struct{})
		done := make(chan struct{})
		go func(init int) {
			defer close(done)
			for i := 0; i < 3; i++ {
				select {
				case <-stop:
					return
				case <-time.After(30 * time.Millisecond):
					unix.Kill(init, unix.SIGUSR2)
				}
			}
		}(init)
		res, err := c.Migrate(ctx, from, to, nodePID, "--rounds", "6", "--target-downtime", "0s", "-v")
		close(stop)
		<-done
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		if res.Outcome != "resumed" {
			t.Fatalf("report: %+v", res)
		}
		if strings.Contains(res.Stderr, "the tree changed") {
			changed++
		}
		// The lines written before the target resumed the tree.
		last := len(testutil.LogLines(t, p.Log))
		t.Logf("%s -> %s: %d processes, %d rounds, downtime %.1f ms, total %.1f ms", from, to, res.Processes, len(res.Rounds), res.DowntimeMS, res.TotalMS)
		procs, err := to.Find("treechurn")
		if err != nil {
			t.Fatal(err)
		}
		init = 0
		for _, pi := range procs {
			// (Short-lived ones exit meanwhile.)
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pi.PID))
			if err == nil && strings.Contains(string(b), "\nNSpid:") {
				f := strings.Fields(strings.SplitN(strings.SplitN(string(b), "\nNSpid:", 2)[1], "\n", 2)[0])
				if len(f) > 0 && f[len(f)-1] == "1" {
					init = pi.PID
				}
			}
		}
		if init == 0 {
			t.Fatalf("no init of the container on %s: %+v", to, procs)
		}
		nodePID = nodePIDOf(t, init)
		// It goes on forking and reaping there, and every keeper (inner
		// PIDs: what treechurn logs) says it is alive after.
		waitLogTick(t, p.Log, lastLogTick(t, p.Log)+5)
		keepers := map[string]bool{}
		for _, l := range testutil.LogLines(t, p.Log) {
			if k, ok := strings.CutPrefix(l, "keeper "); ok {
				keepers[k] = true
			}
		}
		for k := range keepers {
			logLineFrom(t, p.Log, last, "alive pid="+k+" ")
		}
		logLineFrom(t, p.Log, last, "reaped ")
		for _, l := range testutil.LogLines(t, p.Log) {
			if strings.HasPrefix(l, "corrupt") || strings.HasPrefix(l, "FAIL") {
				t.Fatalf("%q", l)
			}
		}
	}
	if changed == 0 {
		t.Errorf("no pre-copy saw the tree change (a child forked every 2 ms): nothing joined or left")
	}
}
