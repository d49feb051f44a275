package e2e

// Containers with a network namespace of their own (issue 14): made by
// `unshare --pid --fork --mount-proc --uts --ipc --net`, given a veth
// whose other end is on a bridge of the test's, running a TCP server
// with a connected client. The namespace moves with the container: its
// interfaces, addresses, routes and sysctls, the server's sockets made
// inside it, the client's connection kept.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// runCmd runs a command (ip, nsenter) and fails the test if it fails.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// needIP skips a test without the ip command (iproute2).
func needIP(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		testutil.Unavailable(t, "ip (iproute2) is not installed: %v", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
	}
}

// netContainer starts echoserver on 0.0.0.0:port as the init of a
// container with a network namespace of its own, and returns unshare and
// the init's PID here.
func netContainer(t *testing.T, port int) (*testutil.Proc, int) {
	t.Helper()
	unshare := requireUnshare(t)
	p := testutil.Start(t, unshare, netContainerArgs(t, port)...)
	p.WaitLine(t, short, 0, "ready")
	init := onlyChild(t, p.PID)
	t.Cleanup(func() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", init))
		if err != nil {
			return
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(p.PID) {
			_ = unix.Kill(init, unix.SIGKILL)
			p.Reap(t)
		}
	})
	return p, init
}

// netContainerArgs are the arguments of unshare that make the container
// of netContainer. Its mount namespace, a copy of the host's, leaves out
// the host's network namespace mounts (nsfs: /run/netns/NAME), which
// come and go with other tests' namespaces and could not be mounted again
// on restore: the shell that becomes echoserver unmounts them first.
func netContainerArgs(t *testing.T, port int) []string {
	t.Helper()
	script := `for m in $(awk '$3 == "nsfs" { print $2 }' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null; done; exec "$@"`
	return []string{"--pid", "--fork", "--mount-proc", "--uts", "--ipc", "--net", "sh", "-c", script, "sh",
		testutil.Build(t, "echoserver"), "0.0.0.0", strconv.Itoa(port)}
}

// plugContainer gives the container of init a veth: eth0 inside, with
// addr (ADDR/LEN), fd00:239::2/64, a default route via gw, ip_forward on;
// host its other end, on bridge (in the network namespace of nsenter
// args pre, or the test's).
func plugContainer(t *testing.T, pre []string, init int, host, bridge, addr, gw string) {
	t.Helper()
	ip := func(args ...string) { runCmd(t, "nsenter", append(append(slices.Clone(pre), "ip"), args...)...) }
	in := func(args ...string) {
		runCmd(t, "nsenter", append([]string{"-t", strconv.Itoa(init), "-n"}, args...)...)
	}
	if len(pre) == 0 {
		ip = func(args ...string) { runCmd(t, "ip", args...) }
	}
	ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(init))
	ip("link", "set", host, "master", bridge, "up")
	in("ip", "link", "set", "lo", "up")
	in("ip", "link", "set", "eth0", "address", "02:00:0a:ef:00:02", "mtu", "1400", "up")
	in("ip", "addr", "add", addr, "brd", "+", "dev", "eth0")
	in("ip", "addr", "add", "10.237.0.2/32", "dev", "eth0", "label", "eth0:9")
	in("ip", "addr", "add", "fd00:239::2/64", "dev", "eth0", "nodad")
	in("ip", "route", "add", "default", "via", gw)
	in("ip", "route", "add", "10.238.0.0/16", "via", gw, "metric", "7")
	in("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.lo.disable_ipv6=1")
}

// netState is `ip -o addr`, `ip route`, `ip -6 route`, `ip -o link`
// and the sysctls plugContainer sets inside the
// network namespace of pid (nsenter args pre first, to reach a node's),
// without interface indexes, which are the kernel's choice.
func netState(t *testing.T, pre []string, pid int) string {
	t.Helper()
	idx := regexp.MustCompile(`(?m)^[0-9]+: | tentative|@if[0-9]+| link-netns(id)? \S+`)
	var b strings.Builder
	for _, args := range [][]string{{"ip", "-o", "addr"}, {"ip", "route"}, {"ip", "-6", "route"}, {"ip", "-o", "link"},
		{"sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.lo.disable_ipv6", "net.ipv6.conf.eth0.disable_ipv6"}} {
		cmd := append(slices.Clone(pre), "nsenter", "-t", strconv.Itoa(pid), "-n")
		out := runCmd(t, cmd[0], append(cmd[1:], args...)...)
		b.WriteString(idx.ReplaceAllString(out, ""))
	}
	return b.String()
}

// settledNetState is netState once it is want, or after short: the
// kernel shows a carrier change (the veth's other end plugged in and up
// at the restore) a moment later (linkwatch defers it up to a second):
// until then `ip route` says "linkdown" and `ip link` "NO-CARRIER".
func settledNetState(t *testing.T, pre []string, pid int, want string) string {
	t.Helper()
	got := netState(t, pre, pid)
	for deadline := time.Now().Add(short); got != want && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		got = netState(t, pre, pid)
	}
	return got
}

// echoBack sends s on c and reads it back.
func echoBack(t *testing.T, c net.Conn, r *bufio.Reader, s string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, s+"\n"); err != nil {
		t.Fatalf("send %q: %v", s, err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != s+"\n" {
		t.Fatalf("echo of %q: %q, %v", s, got, err)
	}
}

// testBridge makes bridge name with address addr in the test's network
// namespace, removed at the end.
func testBridge(t *testing.T, name, addr string) {
	t.Helper()
	runCmd(t, "ip", "link", "add", name, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	runCmd(t, "ip", "addr", "add", addr, "dev", name)
	runCmd(t, "ip", "link", "set", name, "up")
}

// TestContainerNetDumpRestore: the container's network namespace comes
// back with the restore (interfaces, addresses, routes the same, as `ip`
// shows them inside), its veth's other end here on the --net-attach
// bridge, and the client's connection to the server inside goes on.
func TestContainerNetDumpRestore(t *testing.T) {
	testutil.RequireRoot(t)
	needIP(t)
	suffix := strconv.Itoa(os.Getpid() % 100000)
	bridge, host := "mtbr"+suffix, "mtv"+suffix
	testBridge(t, bridge, "10.239.7.1/24")
	p, init := netContainer(t, 7070)
	plugContainer(t, nil, init, host, bridge, "10.239.7.2/24", "10.239.7.1")
	before := netState(t, nil, init)

	var c net.Conn
	testutil.WaitFor(t, short, "a connection to the container's server", func() bool {
		var err error
		c, err = net.DialTimeout("tcp", "10.239.7.2:7070", time.Second)
		return err == nil
	})
	defer c.Close()
	r := bufio.NewReader(c)
	echoBack(t, c, r, "before")

	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: init, Dir: dir, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the container's init %d: %v", init, err)
	}
	p.Reap(t)
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if img.Namespaces == nil || img.Namespaces.Net == nil || len(img.Namespaces.Net.Links) != 2 {
		t.Fatalf("the image's network namespace: %+v", img.Namespaces)
	}
	for _, l := range img.Namespaces.Net.Links {
		if l.Kind == core.LinkVeth && l.Peer != host {
			t.Errorf("veth %s: its other end %q, want %s", l.Name, l.Peer, host)
		}
	}
	// A bridge this host lacks: refused before the network is made, and
	// nothing left.
	if _, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t), NetAttach: "nobr" + suffix}); err == nil {
		t.Fatal("a restore onto a bridge that does not exist went through")
	} else {
		t.Logf("refused: %v", err)
	}
	rp := restoreWith(t, dir, p.Log, init, target.RestoreOptions{NetAttach: bridge})
	if after := settledNetState(t, nil, init, before); after != before {
		t.Errorf("inside after the restore:\n%s\nbefore:\n%s", after, before)
	}
	if out := runCmd(t, "ip", "-o", "link", "show", host); !strings.Contains(out, "master "+bridge) || !strings.Contains(out, "state UP") {
		t.Errorf("the veth's other end here: %s", out)
	}
	checkNetFindsDifferences(t, init, img.Namespaces.Net)
	echoBack(t, c, r, "after")
	// A new connection too.
	c2, err := net.DialTimeout("tcp", "10.239.7.2:7070", short)
	if err != nil {
		t.Fatalf("a new connection after the restore: %v", err)
	}
	echoBack(t, c2, bufio.NewReader(c2), "new")
	c2.Close()
	_ = rp
}

// TestContainerNetRefused: a container whose network namespace has an
// interface of a kind migrate does not carry, a route of another table
// than main, a policy routing rule, a queueing discipline, a permanent
// neighbour entry or an nftables table (none of them carried) is refused
// before anything is frozen, naming it, and runs on.
func TestContainerNetRefused(t *testing.T) {
	testutil.RequireRoot(t)
	needIP(t)
	for _, kind := range []string{"bridge", "vxlan", "tun", "veth-pair", "policy-route", "ip-rule", "qdisc", "neighbour", "nftables"} {
		t.Run(kind, func(t *testing.T) {
			p, init := netContainer(t, 7071)
			in := []string{"-t", strconv.Itoa(init), "-n", "ip"}
			switch kind {
			case "vxlan":
				runCmd(t, "nsenter", append(in, "link", "add", "odd0", "type", "vxlan", "id", "5", "dstport", "4789")...)
			case "tun":
				runCmd(t, "nsenter", append(in, "tuntap", "add", "mode", "tun", "name", "odd0")...)
			case "veth-pair":
				runCmd(t, "nsenter", append(in, "link", "add", "odd0", "type", "veth", "peer", "name", "odd1")...)
			case "policy-route":
				runCmd(t, "nsenter", append(in, "route", "add", "blackhole", "10.1.0.0/16", "table", "100")...)
			case "ip-rule":
				runCmd(t, "nsenter", append(in, "rule", "add", "from", "10.2.0.0/16", "table", "main", "priority", "100")...)
			case "qdisc", "neighbour":
				// On a veth whose other end is here (carried as such).
				host := fmt.Sprintf("nr%d", init)
				runCmd(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(init))
				t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
				if kind == "qdisc" {
					runCmd(t, "nsenter", append(in[:len(in)-1], "tc", "qdisc", "add", "dev", "eth0", "root", "pfifo")...)
				} else {
					runCmd(t, "nsenter", append(in, "neigh", "add", "10.239.7.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")...)
				}
			case "nftables":
				nsFD, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", init), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(nsFD)
				c, err := nftables.New(nftables.WithNetNSFd(nsFD))
				if err != nil {
					t.Fatal(err)
				}
				c.AddTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyINet})
				if err := c.Flush(); err != nil {
					t.Fatalf("an nftables table in the container: %v", err)
				}
			default:
				runCmd(t, "nsenter", append(in, "link", "add", "odd0", "type", kind)...)
			}
			_, err := source.Dump(context.Background(), source.DumpOptions{PID: init, Dir: t.TempDir(), Logger: testLogger(t)})
			var ne *source.NamespaceError
			if !errors.As(err, &ne) || !slices.Equal(ne.Kinds, []string{"net"}) {
				t.Fatalf("dump: %v, want a refusal of the network namespace", err)
			}
			t.Logf("refused: %v", err)
			testutil.RequireRunning(t, init)
			if st, _ := testutil.State(init); st == 'T' || st == 't' {
				t.Errorf("the container's init is left stopped (%c)", st)
			}
			_ = p
		})
	}
}

// TestContainerNetLive: the container with its network namespace moves
// live from node A to node B and back, its veth's other end put on the
// node's bridge by `serve --net-attach`: the client on the third node,
// routed to the node that has it, keeps its connection, and `ip` inside
// shows the same.
func TestContainerNetLive(t *testing.T) {
	needIP(t)
	// The target's pre-resume hook routes the client to it, before the
	// container runs there (after, the client's next segment would reach
	// the original's namespace on the source, and be reset from there).
	hook := filepath.Join(t.TempDir(), "route.sh")
	c := newCluster(t, cluster.Options{ServeArgs: []string{"--net-attach", "cbr0", "--hook", "pre-resume=sh " + hook}})
	script := fmt.Sprintf(`set -e
case "$MIGRATE_SOURCE" in %s:*) via=%s ;; *) via=%s ;; esac
ip -n %s route replace 10.232.0.0/24 via $via
[ -n "$MIGRATE_NET_HOST" ] || exit 0
echo "$MIGRATE_NET_HOST" >> %s.hosts
ip -o link show "$MIGRATE_NET_HOST" >> %s.links
`, c.A.Addr, c.B.Addr, c.A.Addr, c.Client.NetNS, hook, hook)
	if err := os.WriteFile(hook, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	nodeNS := func(n *cluster.Node) []string { return []string{"--net=/run/netns/" + n.NetNS} }
	for _, n := range []*cluster.Node{c.A, c.B} {
		for _, args := range [][]string{
			{"ip", "link", "add", "cbr0", "type", "bridge"},
			{"ip", "addr", "add", "10.232.0.1/24", "dev", "cbr0"},
			{"ip", "link", "set", "cbr0", "up"},
			{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		} {
			runCmd(t, "nsenter", append(nodeNS(n), args...)...)
		}
	}
	route := func(via *cluster.Node) {
		runCmd(t, "ip", "-n", c.Client.NetNS, "route", "replace", "10.232.0.0/24", "via", via.Addr.String())
	}
	route(c.A)
	unshare := requireUnshare(t)
	p, err := c.A.Start(cluster.StartOptions{}, unshare, netContainerArgs(t, 7072)...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	logLineFrom(t, p.Log, 0, "ready")
	init := onlyChild(t, p.PID)
	plugContainer(t, nodeNS(c.A), init, "cv0", "cbr0", "10.232.0.2/24", "10.232.0.1")
	before := netState(t, nil, init)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var conn net.Conn
	testutil.WaitFor(t, short, "a connection from the client to the container's server", func() bool {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		defer dcancel()
		conn, err = c.Client.Dial(dctx, "tcp", "10.232.0.2:7072")
		return err == nil
	})
	defer conn.Close()
	r := bufio.NewReader(conn)
	echoBack(t, conn, r, "on a")
	nodePID := nodePIDOf(t, init)
	for i, hop := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := hop[0], hop[1]
		// The client sends all along: what reaches the source while the
		// container is frozen there is dropped (not reset), and sent again.
		stop, sent := busyClient(conn)
		res, err := c.Migrate(ctx, from, to, nodePID)
		n := stop()
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		busyEchoes(t, conn, r, n, sent)
		if res.Outcome != "resumed" {
			t.Fatalf("report: %+v", res)
		}
		t.Logf("%s -> %s: %d rounds, downtime %.1f ms, total %.1f ms", from, to, len(res.Rounds), res.DowntimeMS, res.TotalMS)
		if out := runCmd(t, "ip", "-n", c.Client.NetNS, "route", "show", "10.232.0.0/24"); !strings.Contains(out, "via "+to.Addr.String()) {
			t.Errorf("the client's route after the hook of %s: %s", to, out)
		}
		echoBack(t, conn, r, fmt.Sprintf("after hop %d", i+1))
		if after := settledNetState(t, nil, nodeContainerInit(t, nodePID), before); after != before {
			t.Errorf("inside on %s:\n%s\nbefore, on a:\n%s", to, after, before)
		}
		if b, err := os.ReadFile(hook + ".hosts"); err != nil || strings.Count(string(b), "cv0\n") != i+1 {
			t.Errorf("MIGRATE_NET_HOST of the pre-resume hooks so far: %q, %v", b, err)
		}
		// Until the resume the other end is down, on no bridge: nothing
		// of the container reaches the network while the original runs.
		if b, err := os.ReadFile(hook + ".links"); err != nil || strings.Count(string(b), "cv0") != i+1 ||
			strings.Contains(string(b), ",UP") || strings.Contains(string(b), "master") {
			t.Errorf("the veth's other end, as the pre-resume hooks saw it: %q, %v", b, err)
		}
		if out := runCmd(t, "nsenter", append(nodeNS(to), "ip", "-o", "link", "show", "cv0")...); !strings.Contains(out, "master cbr0") || !strings.Contains(out, "state UP") {
			t.Errorf("the veth's other end on %s: %s", to, out)
		}
	}

	// The same server and client, not in a container, for comparison:
	// the client reaches it at the service address, which moves with it.
	plain, err := c.A.Start(cluster.StartOptions{}, testutil.Build(t, "echoserver"), "0.0.0.0", "7073")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Stop()
	logLineFrom(t, plain.Log, 0, "ready")
	pc, err := c.Client.Dial(ctx, "tcp", net.JoinHostPort(c.VIP.String(), "7073"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pr := bufio.NewReader(pc)
	echoBack(t, pc, pr, "plain on a")
	res, err := c.Migrate(ctx, c.A, c.B, plain.NSPID)
	if err != nil || res.Outcome != "resumed" {
		t.Fatalf("migrate the plain server: %v, %+v", err, res)
	}
	t.Logf("the same server outside a container, a -> b: %d rounds, downtime %.1f ms, total %.1f ms", len(res.Rounds), res.DowntimeMS, res.TotalMS)
	echoBack(t, pc, pr, "plain on b")
}

// nodeContainerInit returns the PID here of the one live process that is PID 1
// of a container whose PID in its node is nodePID. The original of a
// container just moved may still be in its exit (dead, not yet reaped by
// its parent): it waits until one alone is left.
func nodeContainerInit(t *testing.T, nodePID int) int {
	t.Helper()
	var found []int
	testutil.WaitFor(t, short, fmt.Sprintf("one live container init of PID %d in its node", nodePID), func() bool {
		found = containerInits(t, nodePID)
		return len(found) == 1
	})
	return found[0]
}

// containerInits lists the live processes (not zombies, not dead) that are
// PID 1 of a container whose PID in its node is nodePID.
func containerInits(t *testing.T, nodePID int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "\nState:\tZ") || strings.Contains(string(b), "\nState:\tX") {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(strings.TrimPrefix(l, "NSpid:")); strings.HasPrefix(l, "NSpid:") && len(f) >= 3 &&
				f[len(f)-1] == "1" && f[len(f)-2] == strconv.Itoa(nodePID) {
				found = append(found, pid)
			}
		}
	}
	return found
}

// checkNetFindsDifferences checks that target.CheckNet finds the network
// namespace of init as want has it, and names each difference when want
// is changed in one place.
func checkNetFindsDifferences(t *testing.T, init int, want *core.NetNamespace) {
	t.Helper()
	if diffs := target.CheckNet(init, want); len(diffs) != 0 {
		t.Fatalf("the restored network namespace differs from the image: %v", diffs)
	}
	eth := slices.IndexFunc(want.Links, func(l core.NetLink) bool { return l.Name == "eth0" })
	for what, edit := range map[string]func(n *core.NetNamespace){
		"interface eth0":             func(n *core.NetNamespace) { n.Links[eth].MTU++ },
		"interface lo":               func(n *core.NetNamespace) { n.Links[1-eth].Up = false },
		"interface odd0":             func(n *core.NetNamespace) { n.Links = append(n.Links, core.NetLink{Name: "odd0"}) },
		"routes":                     func(n *core.NetNamespace) { n.Routes[0].Metric++ },
		"sysctl net/ipv4/ip_forward": func(n *core.NetNamespace) { n.Sysctls["net/ipv4/ip_forward"] = "0" },
	} {
		n := *want
		n.Links = slices.Clone(want.Links)
		n.Routes = slices.Clone(want.Routes)
		n.Sysctls = maps.Clone(want.Sysctls)
		edit(&n)
		diffs := target.CheckNet(init, &n)
		if len(diffs) != 1 || diffs[0].What != what {
			t.Errorf("changed %s: differences %v", what, diffs)
		}
	}
}

// busyEchoes checks that the echo server on c (r reads it) sent back
// the n lines busyClient wrote (-1: a write failed, sent says why).
func busyEchoes(t *testing.T, c net.Conn, r *bufio.Reader, n int, sent func() error) {
	t.Helper()
	if n < 0 {
		t.Fatalf("the client, sending during the migration: %v", sent())
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for j := range n {
		if l, err := r.ReadString('\n'); err != nil || l != fmt.Sprintf("busy %d\n", j) {
			t.Fatalf("echo %d of what the client sent during the migration: %q, %v", j, l, err)
		}
	}
}

// busyClient writes "busy N" lines on c every 2 ms until stop, which
// returns how many it wrote, or -1 if a write failed (err returns why).
func busyClient(c net.Conn) (stop func() int, err func() error) {
	done, count := make(chan struct{}), make(chan int, 1)
	var werr error
	go func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-done:
				count <- n
				return
			case <-tick.C:
			}
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, werr = fmt.Fprintf(c, "busy %d\n", n); werr != nil {
				count <- -1
				return
			}
		}
	}()
	return func() int { close(done); return <-count }, func() error { return werr }
}
