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
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// run runs a command (ip, nsenter) and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
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
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	p := testutil.Start(t, unshare, "--pid", "--fork", "--mount-proc", "--uts", "--ipc", "--net", testutil.Build(t, "echoserver"), "0.0.0.0", strconv.Itoa(port))
	p.WaitLine(t, short, 0, "ready")
	kids := childrenOf(t, p.PID)
	if len(kids) != 1 {
		t.Fatalf("unshare %d has children %v", p.PID, kids)
	}
	init := kids[0]
	t.Cleanup(func() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", init))
		if err != nil {
			return
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(p.PID) {
			_ = syscallKill(init)
			p.Reap(t)
		}
	})
	return p, init
}

// syscallKill kills pid with SIGKILL.
func syscallKill(pid int) error {
	proc, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return proc.Kill()
}

// plugContainer gives the container of init a veth: eth0 inside, with
// addr (ADDR/LEN), fd00:239::2/64, a default route via gw, ip_forward on;
// host its other end, on bridge (in the network namespace of nsenter
// args pre, or the test's).
func plugContainer(t *testing.T, pre []string, init int, host, bridge, addr, gw string) {
	t.Helper()
	ip := func(args ...string) { run(t, "nsenter", append(append(slices.Clone(pre), "ip"), args...)...) }
	in := func(args ...string) {
		run(t, "nsenter", append([]string{"-t", strconv.Itoa(init), "-n"}, args...)...)
	}
	if len(pre) == 0 {
		ip = func(args ...string) { run(t, "ip", args...) }
	}
	ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(init))
	ip("link", "set", host, "master", bridge, "up")
	in("ip", "link", "set", "lo", "up")
	in("ip", "link", "set", "eth0", "address", "02:00:0a:ef:00:02", "mtu", "1400", "up")
	in("ip", "addr", "add", addr, "dev", "eth0")
	in("ip", "addr", "add", "fd00:239::2/64", "dev", "eth0", "nodad")
	in("ip", "route", "add", "default", "via", gw)
	in("ip", "route", "add", "10.238.0.0/16", "via", gw, "metric", "7")
	in("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
}

// netState is `ip -o addr`, `ip route` and `ip -6 route` inside the
// network namespace of pid (nsenter args pre first, to reach a node's),
// without interface indexes, which are the kernel's choice.
func netState(t *testing.T, pre []string, pid int) string {
	t.Helper()
	idx := regexp.MustCompile(`(?m)^[0-9]+: | tentative`)
	var b strings.Builder
	for _, args := range [][]string{{"-o", "addr"}, {"route"}, {"-6", "route"}} {
		cmd := append(slices.Clone(pre), "nsenter", "-t", strconv.Itoa(pid), "-n", "ip")
		out := run(t, cmd[0], append(cmd[1:], args...)...)
		b.WriteString(idx.ReplaceAllString(out, ""))
	}
	return b.String()
}

// echo sends s on c and reads it back.
func echo(t *testing.T, c net.Conn, r *bufio.Reader, s string) {
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
	run(t, "ip", "link", "add", name, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	run(t, "ip", "addr", "add", addr, "dev", name)
	run(t, "ip", "link", "set", name, "up")
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
	echo(t, c, r, "before")

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
	rp := restoreWith(t, dir, p.Log, init, target.RestoreOptions{NetAttach: bridge})
	if after := netState(t, nil, init); after != before {
		t.Errorf("inside after the restore:\n%s\nbefore:\n%s", after, before)
	}
	if out := run(t, "ip", "-o", "link", "show", host); !strings.Contains(out, "master "+bridge) || !strings.Contains(out, "state UP") {
		t.Errorf("the veth's other end here: %s", out)
	}
	echo(t, c, r, "after")
	// A new connection too.
	c2, err := net.DialTimeout("tcp", "10.239.7.2:7070", short)
	if err != nil {
		t.Fatalf("a new connection after the restore: %v", err)
	}
	echo(t, c2, bufio.NewReader(c2), "new")
	c2.Close()
	_ = rp
}

// TestContainerNetRefused: a container whose network namespace has an
// interface of a kind migrate does not carry is refused before anything
// is frozen, naming it, and runs on.
func TestContainerNetRefused(t *testing.T) {
	testutil.RequireRoot(t)
	needIP(t)
	for _, kind := range []string{"bridge", "vxlan", "tun"} {
		t.Run(kind, func(t *testing.T) {
			p, init := netContainer(t, 7071)
			in := []string{"-t", strconv.Itoa(init), "-n", "ip"}
			switch kind {
			case "vxlan":
				run(t, "nsenter", append(in, "link", "add", "odd0", "type", "vxlan", "id", "5", "dstport", "4789")...)
			case "tun":
				run(t, "nsenter", append(in, "tuntap", "add", "mode", "tun", "name", "odd0")...)
			default:
				run(t, "nsenter", append(in, "link", "add", "odd0", "type", kind)...)
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

var _ = cluster.Options{}
