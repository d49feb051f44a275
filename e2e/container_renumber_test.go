package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// TestContainerLiveOuterPIDsTaken: a container (a shell as its init,
// an echo server and the threads workload its children, a client
// connected to the server at the service address) moves live to node B,
// where the PIDs and TIDs its processes and threads have in node A are
// taken (a sleep holds each): B gives them others in its namespace, the
// same inside the container, and the report says which. The server
// answers the client all along, the threads tick on, nothing of the
// original is left on A, the sleeps are untouched, and the renumbered
// container moves back to A (where its PIDs on B are free).
func TestContainerLiveOuterPIDsTaken(t *testing.T) {
	// The targets' pre-resume hooks say which PID the init has there.
	hookPIDs := filepath.Join(t.TempDir(), "pids")
	c := newCluster(t, cluster.Options{ServeArgs: []string{"--hook", "pre-resume=echo $MIGRATE_PID >> " + hookPIDs}})
	unshare := requireUnshare(t)
	const port = 7074
	p, err := c.A.Start(cluster.StartOptions{}, unshare, "--pid", "--fork", "--uts", "--ipc",
		"sh", "-c", `"$0" 0.0.0.0 `+strconv.Itoa(port)+` & "$1" & wait`, testutil.Build(t, "echoserver"), testutil.Build(t, "threads"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	logLineFrom(t, p.Log, 0, fmt.Sprintf("ready %d", port))
	logLineFrom(t, p.Log, 0, "ready pid=")
	waitLogTick(t, p.Log, 3)
	init := onlyChild(t, p.PID)
	// tasks lists the container's processes and threads whose init is
	// init here: their PIDs in the node and inside.
	type task struct{ comm, node, inner string }
	tasks := func(init int) (map[string]task, int) {
		out := map[string]task{}
		var server int
		for _, pid := range append([]int{init}, childrenOf(t, init)...) {
			comm := procComm(t, pid)
			if comm == "echoserver" {
				server = pid
			}
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				_, after, _ := strings.Cut(string(b), "\nNSpid:")
				levels := strings.Fields(strings.SplitN(after, "\n", 2)[0])
				if len(levels) < 3 {
					t.Fatalf("task %s of %d: PIDs %v, not in a container in a node", e.Name(), pid, levels)
				}
				tk := task{comm, levels[len(levels)-2], levels[len(levels)-1]}
				out[tk.inner] = tk
			}
		}
		if len(out) != 6 || server == 0 {
			t.Fatalf("the container's tasks (init %d): %+v; want the shell, the server, the threads workload and its 3 threads", init, out)
		}
		return out, server
	}
	before, _ := tasks(init)
	initNode, _ := strconv.Atoi(before["1"].node)
	// B's PIDs of the container taken.
	var holders []int
	var sleeps []*cluster.Proc
	for _, tk := range before {
		pid, _ := strconv.Atoi(tk.node)
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

		// Where the container is now: its init by its PID in the node.
		moved := map[string]string{}
		for _, m := range res.Renumbered {
			moved[strconv.Itoa(m.PID)] = strconv.Itoa(m.TargetPID)
		}
		if n, ok := moved[strconv.Itoa(initNode)]; ok {
			initNode, _ = strconv.Atoi(n)
		}
		after, _ := tasks(nodeContainerInit(t, initNode))
		if lines := testutil.LogLines(t, hookPIDs); len(lines) != i+1 || lines[i] != strconv.Itoa(initNode) {
			t.Errorf("MIGRATE_PID of the pre-resume hooks so far: %q; want the init's PID on %s, %d, last", lines, to, initNode)
		}
		if to == c.B && len(moved) != len(before) {
			t.Errorf("on B, where each of the container's %d PIDs is taken: renumbered %+v", len(before), res.Renumbered)
		} else if to == c.A && len(moved) != 0 {
			t.Errorf("back on A, where its PIDs are free: renumbered %+v", res.Renumbered)
		}
		for inner, b := range before {
			want := b
			if n, ok := moved[b.node]; ok {
				want.node = n
			}
			if a := after[inner]; a != want {
				t.Errorf("on %s: the task %s inside is %+v; want %+v (before: %+v)", to, inner, a, want, b)
			}
			if to == c.B && slices.Contains(holders, atoi(t, after[inner].node)) {
				t.Errorf("on B: task %+v got a PID a sleep holds", after[inner])
			}
		}
		before = after
		waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
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

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
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
	unshare := requireUnshare(t)
	// The counter's heap, sent uncompressed under a bandwidth limit,
	// makes round 0 last seconds: the fork comes during pre-copy.
	p, err := c.A.Start(cluster.StartOptions{}, unshare, "--pid", "--fork", "--uts", "--ipc",
		"sh", "-c", `trap "sleep 600 &" USR1; "$0" -m 8 & while :; do wait; done`, testutil.Build(t, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	waitLogTick(t, p.Log, 3)
	init := onlyChild(t, p.PID)
	initNode := nodePIDOf(t, init)
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
