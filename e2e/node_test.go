package e2e

// Live migration between the nodes of a two-node cluster (package
// e2e/cluster): network namespaces joined by a bridge in a switch
// namespace, each agent node with its own PID and mount namespaces and its
// `migrate serve` as PID 1 there, and a client node. Unlike the loopback
// tests (live_test.go), the source and the service talk over a real link,
// which the fault tests cut, and the service address (VIP) moves with the
// process.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// newCluster builds a cluster for the test, torn down by a cleanup. What
// the cluster ran, and the services' logs, go to the test log if the test
// fails.
func newCluster(t *testing.T, o cluster.Options) *cluster.Cluster {
	t.Helper()
	testutil.RequireRoot(t)
	o.Migrate = buildMigrate(t)
	log := &lockedBuffer{}
	if o.Log == nil {
		o.Log = log
	}
	o.ServeArgs = append(o.ServeArgs, "-v")
	start := time.Now()
	c, err := cluster.New(o)
	var me *cluster.MissingError
	if errors.As(err, &me) {
		testutil.Unavailable(t, "%v", me)
	}
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, log)
	}
	t.Logf("cluster %s up in %v (hooks: %v)", c.ID, time.Since(start).Round(time.Millisecond), c.Hooks)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []*cluster.Node{c.A, c.B} {
				b, _ := os.ReadFile(n.ServeLog)
				t.Logf("serve log of node %s:\n%s", n.Name, b)
			}
			// What happened after the setup (the setup's commands start
			// with "$ ").
			var lines []string
			for _, l := range strings.Split(log.String(), "\n") {
				if !strings.HasPrefix(l, "$ ") {
					lines = append(lines, l)
				}
			}
			t.Logf("cluster log (without the setup):\n%s", strings.Join(lines, "\n"))
		}
		if err := c.Close(); err != nil {
			t.Errorf("cluster close: %v", err)
		}
	})
	return c
}

// lockedBuffer is a bytes.Buffer for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// nodeCounter starts testdata/counter on node n with args, and waits for
// its first ticks.
func nodeCounter(t *testing.T, n *cluster.Node, args ...string) *cluster.Proc {
	t.Helper()
	p, err := n.Start(cluster.StartOptions{}, testutil.Build(t, "counter"), args...)
	if err != nil {
		t.Fatal(err)
	}
	waitLogTick(t, p.Log, 3)
	return p
}

// lastLogTick returns the last tick in a workload's log.
func lastLogTick(t *testing.T, log string) int {
	t.Helper()
	ticks := testutil.Ticks(testutil.LogLines(t, log))
	if len(ticks) == 0 {
		return 0
	}
	return ticks[len(ticks)-1]
}

// waitLogTick waits until the log shows a tick above n.
func waitLogTick(t *testing.T, log string, n int) {
	t.Helper()
	testutil.WaitFor(t, short, fmt.Sprintf("a tick above %d in %s", n, log), func() bool {
		for _, l := range testutil.LogLines(t, log) {
			if strings.HasPrefix(l, "FAIL") {
				t.Fatalf("workload: %s", l)
			}
		}
		return lastLogTick(t, log) > n
	})
}

// onlyCopy checks that exactly one live process named comm with PID nspid
// runs on the agent nodes, on node want, that nothing else of that name
// is there, and that it is running (not stopped, not traced), and returns
// it.
func onlyCopy(t *testing.T, c *cluster.Cluster, comm string, nspid int, want *cluster.Node) cluster.Located {
	t.Helper()
	var locs []cluster.Located
	testutil.WaitFor(t, short, fmt.Sprintf("one %s with pid %d, on node %s", comm, nspid, want), func() bool {
		all, err := c.Locate(comm, nspid)
		if err != nil {
			t.Fatal(err)
		}
		locs = nil
		for _, l := range all {
			if l.Node != c.Client {
				locs = append(locs, l)
			}
		}
		return len(locs) == 1 && locs[0].Node == want
	})
	for _, n := range []*cluster.Node{c.A, c.B} {
		ps, err := n.Find(comm)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if n != want || p.NSPID != nspid {
				t.Errorf("another %s on node %s: %+v", comm, n, p)
			}
		}
	}
	l := locs[0]
	checkRunningUntraced(t, l.PID)
	return l
}

// checkVIPOn checks that node n, and only n, holds the VIP.
func checkVIPOn(t *testing.T, c *cluster.Cluster, n *cluster.Node) {
	t.Helper()
	var holders []*cluster.Node
	testutil.WaitFor(t, short, "the VIP on node "+n.Name, func() bool {
		var err error
		holders, err = c.VIPHolders()
		if err != nil {
			t.Fatal(err)
		}
		return len(holders) == 1 && holders[0] == n
	})
}

// TestNodeCounterRoundTrip: the counter (with a 16 MiB heap) moves from A
// to B and back while it runs: each time exactly one copy runs, on the
// target, with the same PID in its node, counting on without a gap, and
// the VIP follows it (moved by the hooks, or by the cluster without them)
// and answers the client from there at once.
func TestNodeCounterRoundTrip(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	ask := nameServers(t, c)
	p := nodeCounter(t, c.A, "-m", "16")
	onlyCopy(t, c, "counter", p.NSPID, c.A)
	checkVIPOn(t, c, c.A)
	for _, vip := range []string{c.VIP.String(), c.VIP6.String()} {
		if got, err := ask(vip); err != nil || got != "a" {
			t.Fatalf("the VIP %s answers %q, %v; want a", vip, got, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, to := range []*cluster.Node{c.B, c.A} {
		from := map[*cluster.Node]*cluster.Node{c.A: c.B, c.B: c.A}[to]
		last := lastLogTick(t, p.Log)
		start := time.Now()
		res, err := c.Migrate(ctx, from, to, p.NSPID)
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		if res.Outcome != "resumed" || len(res.Rounds) < 2 || res.PID != p.NSPID {
			t.Fatalf("report: %+v", res)
		}
		t.Logf("%s -> %s: %d rounds, %d bytes on the wire (%d raw, RSS %d), downtime %.1f ms (target %.1f ms), total %.1f ms (%v with the command), tracker %s, VIP moved by %s",
			from, to, len(res.Rounds), res.BytesWire, res.BytesRaw, res.RSSBytes, res.DowntimeMS, res.TargetDowntimeMS,
			res.TotalMS, time.Since(start).Round(time.Millisecond), res.Tracker, res.VIPMovedBy)
		if i == 0 {
			// The original was nsenter's child: killed, and reaped.
			select {
			case <-p.Done():
				if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
					t.Errorf("the original ended with %v, want killed", err)
				}
			case <-time.After(short):
				t.Fatalf("the original (pid %d) is still there", p.PID)
			}
		}
		onlyCopy(t, c, "counter", p.NSPID, to)
		waitLogTick(t, p.Log, last+5)
		checkVIPOn(t, c, to)
		// The client reaches the VIP on its new node at once (within the
		// dial's second: no SYN lost to a stale neighbour entry).
		for _, vip := range []string{c.VIP.String(), c.VIP6.String()} {
			if got, err := ask(vip); err != nil || got != to.Name {
				t.Errorf("after the migration to %s, the VIP %s answers %q, %v", to, vip, got, err)
			}
		}
	}
	l := onlyCopy(t, c, "counter", p.NSPID, c.A)
	if l.PPID != c.A.ServePID {
		t.Errorf("the counter back on A has parent %d, want the service (%d)", l.PPID, c.A.ServePID)
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// nameServers makes each agent node answer with its name on port 9000
// (listeners of the test process in the nodes' network namespaces), and
// returns a function that asks, from the client node, whoever holds the
// VIP (either family) there, within a second.
func nameServers(t *testing.T, c *cluster.Cluster) func(vip string) (string, error) {
	t.Helper()
	for _, n := range []*cluster.Node{c.A, c.B} {
		l, err := n.Listen("tcp", ":9000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				io.WriteString(conn, n.Name)
				conn.Close()
			}
		}()
	}
	return func(vip string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := c.Client.Dial(ctx, "tcp", net.JoinHostPort(vip, "9000"))
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Second))
		b, err := io.ReadAll(conn)
		return string(b), err
	}
}

// TestNodeVIP: the VIP moved from A to B and back is reachable from the
// client at once, over IPv4 and IPv6: the new holder's announcement
// (unsolicited ARP, unsolicited neighbour advertisement) updates the
// client's neighbour entry, which points at the old holder.
func TestNodeVIP(t *testing.T) {
	c := newCluster(t, cluster.Options{Hooks: cluster.HooksOff})
	ask := nameServers(t, c)
	neigh := func(vip string) string {
		out, _ := exec.Command("ip", "-n", c.Client.NetNS, "neigh", "show", vip, "dev", "eth0").Output()
		return string(out)
	}
	for _, vip := range []string{c.VIP.String(), c.VIP6.String()} {
		if got, err := ask(vip); err != nil || got != "a" {
			t.Fatalf("the VIP %s answers %q, %v; want a", vip, got, err)
		}
	}
	for _, step := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := step[0], step[1]
		moved := time.Now()
		if err := c.MoveVIP(from, to); err != nil {
			t.Fatal(err)
		}
		for _, vip := range []string{c.VIP.String(), c.VIP6.String()} {
			// The announcement reaches the client within milliseconds; a
			// neighbour entry left alone would keep the old MAC for 5 s.
			testutil.WaitFor(t, time.Second, fmt.Sprintf("the client's neighbour entry of %s to name %s's MAC", vip, to), func() bool {
				return strings.Contains(neigh(vip), " lladdr "+to.MAC.String()+" ")
			})
			got, err := ask(vip)
			if err != nil || got != to.Name {
				t.Fatalf("after the move to %s, the VIP %s answers %q, %v", to, vip, got, err)
			}
			t.Logf("VIP %s on %s, answering after %v", vip, to, time.Since(moved).Round(time.Millisecond))
		}
		checkVIPOn(t, c, to)
	}
}
