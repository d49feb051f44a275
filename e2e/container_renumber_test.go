package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestContainerLiveOuterPIDsTaken: a container (a shell as its init,
// an echo server its child, a client connected to it at the service
// address) moves live to node B, where the PIDs its two processes have
// in node A are taken (a sleep holds each): B gives them other PIDs in
// its namespace, the same inside the container (1 and 2), and the
// report says which. The server answers the client all along, nothing
// of the original is left on A, the sleeps are untouched, and the
// renumbered container moves back to A (where its PIDs on B are free).
func TestContainerLiveOuterPIDsTaken(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	const port = 7074
	p, err := c.A.Start(cluster.StartOptions{}, unshare, "--pid", "--fork", "--uts", "--ipc",
		"sh", "-c", `"$0" 0.0.0.0 `+strconv.Itoa(port)+` & wait`, testutil.Build(t, "echoserver"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	logLineFrom(t, p.Log, 0, fmt.Sprintf("ready %d", port))
	kids := childrenOf(t, p.PID)
	if len(kids) != 1 {
		t.Fatalf("unshare %d has children %v", p.PID, kids)
	}
	init := kids[0]
	if kids = childrenOf(t, init); len(kids) != 1 {
		t.Fatalf("the container's init %d has children %v", init, kids)
	}
	server := kids[0]
	// nodePIDs are a process's PIDs in its node and in its container.
	nodePIDs := func(pid int) (node, inner int) {
		levels := strings.Fields(testutil.StatusField(t, pid, "NSpid"))
		if len(levels) < 3 {
			t.Fatalf("process %d's PIDs %v: not in a container in a node", pid, levels)
		}
		node, _ = strconv.Atoi(levels[len(levels)-2])
		inner, _ = strconv.Atoi(levels[len(levels)-1])
		return node, inner
	}
	initNode, initInner := nodePIDs(init)
	serverNode, serverInner := nodePIDs(server)
	if initInner != 1 || serverInner != 2 {
		t.Fatalf("inside the container: init %d, server %d; want 1 and 2", initInner, serverInner)
	}
	// B's PIDs of the container taken.
	var holders []int
	var sleeps []*cluster.Proc
	for _, pid := range []int{initNode, serverNode} {
		h, err := c.B.Start(cluster.StartOptions{PID: pid}, "sleep", "600")
		if err != nil {
			t.Fatal(err)
		}
		defer h.Stop()
		holders, sleeps = append(holders, h.NSPID), append(sleeps, h)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := c.Client.Dial(ctx, "tcp", net.JoinHostPort(c.VIP.String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	echoBack(t, conn, r, "on a")

	for i, hop := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := hop[0], hop[1]
		stop, sent := busyClient(conn)
		res, err := c.Migrate(ctx, from, to, initNode)
		n := stop()
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		if res.Outcome != "resumed" {
			t.Fatalf("report: %+v", res)
		}
		busyEchoes(t, conn, r, n, sent)
		echoBack(t, conn, r, fmt.Sprintf("after hop %d", i+1))
		t.Logf("%s -> %s: %d rounds, downtime %.1f ms, renumbered %+v", from, to, len(res.Rounds), res.DowntimeMS, res.Renumbered)

		// Where the container is now, by its PIDs in the node.
		moved := map[int]int{}
		for _, m := range res.Renumbered {
			moved[m.PID] = m.TargetPID
		}
		newNode := func(pid int) int {
			if n, ok := moved[pid]; ok {
				return n
			}
			return pid
		}
		if to == c.B {
			// Both were taken there: both renumbered, to PIDs free there.
			for _, pid := range []int{initNode, serverNode} {
				if n, ok := moved[pid]; !ok || n == pid || contains(holders, n) {
					t.Errorf("pid %d on B: renumbered %v (to %d); want another PID, free there", pid, ok, n)
				}
			}
		} else if len(res.Renumbered) != 0 {
			t.Errorf("back on A, where its PIDs are free: renumbered %+v", res.Renumbered)
		}
		initNode, serverNode = newNode(initNode), newNode(serverNode)
		init = nodeContainerInit(t, initNode)
		if kids = childrenOf(t, init); len(kids) != 1 {
			t.Fatalf("the container's init %d has children %v", init, kids)
		}
		server = kids[0]
		for _, pr := range []struct {
			pid, node, inner int
		}{{init, initNode, 1}, {server, serverNode, 2}} {
			if node, inner := nodePIDs(pr.pid); node != pr.node || inner != pr.inner {
				t.Errorf("on %s: process %d is %d in the node and %d inside; want %d and %d", to, pr.pid, node, inner, pr.node, pr.inner)
			}
		}
		// Nothing of the original where it was (B keeps its sleeps).
		noContainerOn(t, from)
		if from == c.A {
			checkNodeEmpty(t, from)
		} else {
			checkNodeEmpty(t, from, holders...)
		}
	}
	for _, h := range sleeps {
		if !h.Running() {
			t.Errorf("the sleep holding pid %d on B is gone: %v", h.NSPID, h.Err())
		}
	}
}

// noContainerOn waits until node n holds no process of a container (a
// PID namespace below the node's), which checkNodeEmpty, going by the
// PIDs inside, would take a container's init for the node's service.
func noContainerOn(t *testing.T, n *cluster.Node) {
	t.Helper()
	var left []string
	if !testutil.Poll(short, func() bool {
		ps, err := n.Procs()
		if err != nil {
			t.Fatal(err)
		}
		left = left[:0]
		for _, q := range ps {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", q.PID))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f, ok := strings.CutPrefix(l, "NSpid:"); ok && len(strings.Fields(f)) >= 3 {
					left = append(left, fmt.Sprintf("%d (%s, %c, NSpid%s)", q.PID, q.Comm, q.State, f))
				}
			}
		}
		return len(left) == 0
	}) {
		t.Errorf("node %s still holds processes of a container: %v", n, left)
	}
}

// TestContainerLiveOuterPIDsTakenJoin: a process forked into a container
// while it moves live (its shell init forks a sleep on SIGUSR1, once
// pre-copy runs) gets, on B, where its PID in node A is taken, another
// PID outside the container, the same inside; the rest of the container
// keeps its PIDs (free on B), and the report names the one renumbered.
func TestContainerLiveOuterPIDsTakenJoin(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	// The counter's heap, sent uncompressed under a bandwidth limit,
	// makes round 0 last seconds: the fork comes during pre-copy.
	p, err := c.A.Start(cluster.StartOptions{}, unshare, "--pid", "--fork", "--uts", "--ipc",
		"sh", "-c", `trap "sleep 600 &" USR1; "$0" -m 8 & while :; do wait; done`, testutil.Build(t, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	waitLogTick(t, p.Log, 3)
	kids := childrenOf(t, p.PID)
	if len(kids) != 1 {
		t.Fatalf("unshare %d has children %v", p.PID, kids)
	}
	init := kids[0]
	levels := strings.Fields(testutil.StatusField(t, init, "NSpid"))
	if len(levels) < 3 {
		t.Fatalf("the init's PIDs %v: not in a container in a node", levels)
	}
	initNode, _ := strconv.Atoi(levels[len(levels)-2])
	// PIDs first..first+7 taken on B (a shell's sleeps, each forked
	// right after ns_last_pid was set below its PID), the newcomer's on
	// A one of them (ns_last_pid set there just before the signal: the
	// first or, if migrate's threads took some, one just after).
	const first, holds = 15000, 8
	hold, err := c.B.Start(cluster.StartOptions{}, "sh", "-c",
		fmt.Sprintf(`p=%d; while [ $p -lt %d ]; do echo $((p-1)) > /proc/sys/kernel/ns_last_pid; sleep 600 & p=$((p+1)); done; wait`, first, first+holds))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Stop()
	testutil.WaitFor(t, short, fmt.Sprintf("sleeps holding pids %d-%d on B", first, first+holds-1), func() bool {
		ps, err := c.B.Find("sleep")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, q := range ps {
			if q.NSPID >= first && q.NSPID < first+holds {
				n++
			}
		}
		return n == holds
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := c.StartMigration(ctx, c.A, c.B, initNode, "--codec", "none", "--bandwidth", "2", "--rounds", "4", "--target-downtime", "0s")
	if err != nil {
		t.Fatal(err)
	}
	// Pre-copy runs once B builds the container (the first layout).
	testutil.WaitFor(t, time.Minute, "the container being built on B", func() bool {
		ps, err := c.B.Procs()
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range ps {
			if q.PPID != hold.PID && q.NSPID != 1 && q.PID != hold.PID {
				return true
			}
		}
		select {
		case <-m.Done():
			res, err := m.Wait()
			t.Fatalf("migrate ended before the fork: %v, %+v", err, res)
		default:
		}
		return false
	})
	if out, err := c.A.Command("sh", "-c", fmt.Sprintf("echo %d > /proc/sys/kernel/ns_last_pid && kill -USR1 %d", first-1, initNode)).CombinedOutput(); err != nil {
		t.Fatalf("fork in the container: %v: %s", err, out)
	}
	var joined, joinedInner int
	testutil.WaitFor(t, short, "the sleep forked in the container", func() bool {
		for _, k := range childrenOf(t, init) {
			if procComm(t, k) == "sleep" {
				l := strings.Fields(testutil.StatusField(t, k, "NSpid"))
				joined, _ = strconv.Atoi(l[len(l)-2])
				joinedInner, _ = strconv.Atoi(l[len(l)-1])
				return true
			}
		}
		return false
	})
	if joined < first || joined >= first+holds {
		t.Fatalf("the sleep forked in the container is %d on A, not one of the PIDs %d-%d held on B", joined, first, first+holds-1)
	}
	res, err := m.Wait()
	if err != nil {
		t.Fatalf("migrate: %v\nstderr:\n%s", err, res.Stderr)
	}
	if res.Outcome != "resumed" {
		t.Fatalf("report: %+v", res)
	}
	t.Logf("a -> b: %d processes, %d rounds, downtime %.1f ms, renumbered %+v", res.Processes, len(res.Rounds), res.DowntimeMS, res.Renumbered)
	if len(res.Renumbered) != 1 || res.Renumbered[0].PID != joined || res.Renumbered[0].TargetPID == joined {
		t.Fatalf("renumbered %+v; want the newcomer %d alone, to another PID", res.Renumbered, joined)
	}
	here := res.Renumbered[0].TargetPID
	init = nodeContainerInit(t, initNode)
	var found bool
	for _, k := range childrenOf(t, init) {
		l := strings.Fields(testutil.StatusField(t, k, "NSpid"))
		if procComm(t, k) == "sleep" {
			found = true
			if node, _ := strconv.Atoi(l[len(l)-2]); node != here || l[len(l)-1] != strconv.Itoa(joinedInner) {
				t.Errorf("the newcomer on B: NSpid %v; want %d in the node, %d inside", l, here, joinedInner)
			}
		}
	}
	if !found {
		t.Errorf("no sleep in the container on B: children %v", childrenOf(t, init))
	}
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+5)
	noContainerOn(t, c.A)
	checkNodeEmpty(t, c.A)
	if !hold.Running() {
		t.Errorf("the shell holding pids on B is gone: %v", hold.Err())
	}
}
