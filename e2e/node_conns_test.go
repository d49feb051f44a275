package e2e

// Many established TCP connections moved with their server between nodes,
// and left as they were by a migration that aborts after the target
// rebuilt them.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// manyConns is n TCP connections from the client node to an echo server.
type manyConns struct {
	conns []net.Conn
	rd    []*bufio.Reader
}

// dialMany opens n connections from the client node to addr and checks
// that each is echoed.
func dialMany(t *testing.T, c *cluster.Cluster, addr string, n int) *manyConns {
	t.Helper()
	m := &manyConns{}
	t.Cleanup(func() {
		for _, c := range m.conns {
			c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	for i := 0; i < n; i++ {
		conn, err := c.Client.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i, addr, err)
		}
		m.conns = append(m.conns, conn)
		m.rd = append(m.rd, bufio.NewReader(conn))
	}
	if err := m.exchange("before"); err != nil {
		t.Fatal(err)
	}
	return m
}

// exchange sends a line on every connection, all at once, then reads each
// one's echo: the first connection that fails (reset, closed, no answer in
// time, another answer) is the error.
func (m *manyConns) exchange(tag string) error {
	deadline := time.Now().Add(long)
	for i, c := range m.conns {
		c.SetDeadline(deadline)
		if _, err := fmt.Fprintf(c, "%s %d\n", tag, i); err != nil {
			return fmt.Errorf("connection %d (%s): send: %w", i, c.LocalAddr(), err)
		}
	}
	for i, c := range m.conns {
		line, err := m.rd[i].ReadString('\n')
		if err != nil {
			return fmt.Errorf("connection %d (%s): answer: %w", i, c.LocalAddr(), err)
		}
		if want := fmt.Sprintf("%s %d\n", tag, i); line != want {
			return fmt.Errorf("connection %d (%s): answer %q, want %q", i, c.LocalAddr(), line, want)
		}
	}
	return nil
}

// estabResets reads the node's count of connections reset in an
// established state (Tcp EstabResets of /proc/net/snmp): a reset a peer
// sent, or one the node's own stack sent, on any connection.
func estabResets(t *testing.T, n *cluster.Node) int64 {
	t.Helper()
	return tcpCounter(t, n, "EstabResets")
}

// tcpCounter reads a Tcp counter of the node's /proc/net/snmp.
func tcpCounter(t *testing.T, n *cluster.Node, name string) int64 {
	t.Helper()
	var v int64 = -1
	err := n.Do(func() error {
		// The thread's network namespace: /proc/self would be the process's.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, l := range strings.Split(string(b), "\n") {
			f, ok := strings.CutPrefix(l, "Tcp: ")
			if !ok {
				continue
			}
			if names == nil {
				names = strings.Fields(f)
				continue
			}
			for i, s := range strings.Fields(f) {
				if i < len(names) && names[i] == name {
					v, err = strconv.ParseInt(s, 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Tcp %s in /proc/net/snmp", name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// startEcho starts testdata/echoserver on n, on the wildcard address.
func startEcho(t *testing.T, n *cluster.Node, port int) *cluster.Proc {
	t.Helper()
	p, err := n.Start(cluster.StartOptions{}, testutil.Build(t, "echoserver"), "0.0.0.0", strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, p.Log, "ready ")
	return p
}

const manyConnsN = 200

// TestNodeManyConns: a server with 200 established connections to the
// client (reached through the VIP) moves from A to B. Each connection then
// sends a line and gets it back, and none was reset. (With more than about
// 60 fds the target once failed every such migration: "restore files: fd
// 65: injected pidfd_getfd: bad file descriptor".)
func TestNodeManyConns(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	if !c.Hooks {
		t.Skip("migrate takes no --hook: the VIP cannot move with the connections")
	}
	srv := startEcho(t, c.A, 9200)
	m := dialMany(t, c, net.JoinHostPort(c.VIP.String(), "9200"), manyConnsN)
	resets := estabResets(t, c.Client)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, srv.NSPID)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Logf("A -> B with %d connections: downtime %.1f ms (target %.1f ms), total %.1f ms",
		manyConnsN, res.DowntimeMS, res.TargetDowntimeMS, res.TotalMS)
	// The target's network lock, installed as the tree's layout is
	// restored, is in place before the first socket is made.
	lock, files := -1, -1
	for i, st := range res.TargetSteps {
		switch st.Name {
		case "network lock":
			lock = i
		case "restore files":
			files = i
		}
	}
	if lock < 0 || files < 0 || lock > files {
		t.Errorf("target steps %+v: want the network lock waited for before the files are restored", res.TargetSteps)
	}
	onlyCopy(t, c, "echoserver", srv.NSPID, c.B)
	checkVIPOn(t, c, c.B)
	if err := m.exchange("after"); err != nil {
		t.Fatalf("after the move: %v", err)
	}
	if d := estabResets(t, c.Client) - resets; d != 0 {
		t.Errorf("%d connections of the client node were reset", d)
	}
}

// TestNodeManyConnsAbort: the same migration aborts once B rebuilt every
// connection (B's pre-resume hook fails), while the client sends on every
// connection throughout. The original server on A keeps all 200: each
// answers every line, before, during and after, and none was reset.
func TestNodeManyConnsAbort(t *testing.T) {
	c := newCluster(t, cluster.Options{ServeArgs: []string{"--hook", "pre-resume=echo failing pre-resume hook >&2; exit 1"}})
	if !c.Hooks {
		t.Skip("migrate takes no --hook: the VIP cannot move with the connections")
	}
	srv := startEcho(t, c.A, 9200)
	m := dialMany(t, c, net.JoinHostPort(c.VIP.String(), "9200"), manyConnsN)
	resets := estabResets(t, c.Client)
	stop, busy := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				busy <- nil
				return
			default:
			}
			if err := m.exchange(fmt.Sprintf("during-%d", i)); err != nil {
				busy <- err
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, srv.NSPID, "-v")
	close(stop)
	if err := <-busy; err != nil {
		t.Errorf("during the migration: %v", err)
	}
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, "pre-resume") {
		t.Errorf("migrate failed for another reason than the target's pre-resume hook: %s", msg)
	}
	onlyCopy(t, c, "echoserver", srv.NSPID, c.A)
	checkVIPOn(t, c, c.A)
	if err := m.exchange("after"); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if d := estabResets(t, c.Client) - resets; d != 0 {
		t.Errorf("%d connections of the client node were reset", d)
	}
}
