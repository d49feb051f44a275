package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// TestSocketPairs: unix sockets connected inside the process (stream,
// seqpacket and datagram pairs, a half-shut pair, a pair whose peer
// closed, a named datagram socket with a client, an abstract listener with
// an accepted connection), all with unread data. After restore every byte
// arrives intact, in its messages, and the process keeps using them.
func TestSocketPairs(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sock_pair")
	want := "check pair=ok half=ok seqpacket=ok dgram=ok gone=ok named=ok listener=ok"

	// The workload's own check, without a dump, holds.
	base := testutil.Start(t, bin, t.TempDir())
	base.WaitLine(t, short, 0, "ready")
	base.Signal(t, unix.SIGUSR1)
	if got, _ := base.WaitLine(t, short, 0, "check"); got != want {
		t.Fatalf("the workload fails its own check without a dump:\n%s", got)
	}
	base.Kill(t)

	p := testutil.Start(t, bin, t.TempDir())
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	before := testutil.FDs(t, p.PID)
	dir, img := dumpKill(t, p, "")
	queues := 0
	for _, fd := range img.Process.FDs {
		if fd.Socket != nil && fd.Socket.Queue != "" {
			queues++
		}
	}
	if queues != 8 {
		t.Errorf("%d socket queues in the image, want 8", queues)
	}
	r := restoreOK(t, dir, p.Log)
	checkFDsSame(t, before, r.PID, 1, 2)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	if got, _ := r.WaitLine(t, short, n, "check"); got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
}

// askStream connects to a stream server, sends a line and returns the answer.
func askStream(t *testing.T, network, addr string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, short)
	if err != nil {
		t.Fatalf("connect to %s %s: %v", network, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(short))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatalf("%s %s: write: %v", network, addr, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s %s: read the answer: %v", network, addr, err)
	}
	return strings.TrimSpace(line)
}

func askUDP(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256)
	for try := 0; try < 5; try++ {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(buf); err == nil {
			return strings.TrimSpace(string(buf[:n]))
		}
	}
	t.Fatalf("no answer from udp %s", addr)
	return ""
}

// freeSocketPort returns a port free on 127.0.0.1 and [::1] for TCP and UDP.
func freeSocketPort(t *testing.T) int {
	t.Helper()
	for try := 0; try < 20; try++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		free := true
		for _, nw := range []string{"tcp6", "udp4"} {
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			if nw == "tcp6" {
				addr = fmt.Sprintf("[::1]:%d", port)
			}
			var c interface{ Close() error }
			if nw == "udp4" {
				c, err = net.ListenPacket(nw, addr)
			} else {
				c, err = net.Listen(nw, addr)
			}
			if err != nil {
				free = false
				break
			}
			c.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// socketOpts has the workload print what getsockopt reads on each socket.
func socketOpts(t *testing.T, p *testutil.Proc) []string {
	t.Helper()
	n := len(p.Lines(t))
	p.Signal(t, unix.SIGUSR1)
	_, end := p.WaitLine(t, short, n, "opts-end")
	var out []string
	for _, l := range p.Lines(t)[n:end] {
		if strings.HasPrefix(l, "opts ") {
			out = append(out, l)
		}
	}
	return out
}

// TestSocketListeners: a server on a unix socket path, TCP on 127.0.0.1
// and [::1] and UDP, with socket options, and a bound and two unbound
// sockets. After restore new clients get answers (the counts go on), and
// every socket reads back the same options, ports, backlogs and states.
func TestSocketListeners(t *testing.T) {
	testutil.RequireRoot(t)
	work := t.TempDir()
	port := freeSocketPort(t)
	p := testutil.Start(t, testutil.Build(t, "sock_listen"), work, fmt.Sprint(port))
	p.WaitLine(t, short, 0, "ready")
	sock := filepath.Join(work, "srv.sock")
	tcp4, tcp6, udp4 := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port), fmt.Sprintf("127.0.0.1:%d", port)
	check := func(round int) {
		t.Helper()
		for _, c := range []struct{ network, addr, name string }{{"unix", sock, "unix"}, {"tcp4", tcp4, "tcp4"}, {"tcp6", tcp6, "tcp6"}} {
			if got, want := askStream(t, c.network, c.addr), fmt.Sprintf("answer %s %d", c.name, round); got != want {
				t.Errorf("%s: %q, want %q", c.addr, got, want)
			}
		}
		if got, want := askUDP(t, udp4), fmt.Sprintf("pong udp4 %d", round); got != want {
			t.Errorf("udp %s: %q, want %q", udp4, got, want)
		}
	}
	check(1)
	before := socketOpts(t, p)
	if len(before) != 8 {
		t.Fatalf("opts lines %q", before)
	}
	for _, l := range before {
		t.Log(l)
	}
	fds := testutil.FDs(t, p.PID)

	dir, img := dumpKill(t, p, "")
	for _, fd := range img.Process.FDs {
		if s := fd.Socket; s != nil {
			t.Logf("fd %d: %s %s local=%s backlog=%d options=%d", fd.FD, s.State, socketFamily(s.Family), s.Local, s.Backlog, len(s.Options))
		}
	}

	// While something else listens on the TCP port, the restore fails
	// naming the address, and leaves nothing behind.
	blocker, err := net.Listen("tcp4", tcp4)
	if err != nil {
		t.Fatal(err)
	}
	kids := testutil.Children()
	_, err = target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	blocker.Close()
	var ae *target.AddrError
	if !errors.As(err, &ae) || ae.Addr != tcp4 || !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("restore with %s taken: %v (%T), want *target.AddrError for it", tcp4, err, err)
	}
	t.Logf("refused as expected: %v", err)
	if _, err := testutil.State(img.Process.PID); err == nil {
		t.Fatalf("process %d exists after the failed restore", img.Process.PID)
	}
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children after the failed restore %v, before %v", got, kids)
	}

	r := restoreOK(t, dir, p.Log)
	checkFDsSame(t, fds, r.PID, 1, 2)
	check(2)
	after := socketOpts(t, r)
	if strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("socket options before the dump:\n%s\nafter restore:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	check(3)
}

func socketFamily(f int) string {
	switch f {
	case unix.AF_UNIX:
		return "unix"
	case unix.AF_INET:
		return "ipv4"
	case unix.AF_INET6:
		return "ipv6"
	}
	return fmt.Sprint(f)
}

// TestSocketRefused: a unix socket connected to a socket outside the
// process, a netlink socket: the dump fails with an *UnsupportedFDError
// naming the fd, and the process runs on untouched. (Established TCP
// connections move: tcp_test.go.)
func TestSocketRefused(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sock_outside")
	// The outside peers live in the test process.
	path := filepath.Join(t.TempDir(), "outside.sock")
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	keepAccepting(t, ul)
	tl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	keepAccepting(t, tl)
	for _, tc := range [][]string{
		{"unix", path},
		{"netlink"},
	} {
		t.Run(tc[0], func(t *testing.T) {
			p := testutil.Start(t, bin, tc...)
			ready, _ := p.WaitLine(t, short, 0, "ready")
			p.WaitTick(t, short, 3)
			var fd int
			fmt.Sscanf(field(t, ready, "fd"), "%d", &fd)
			snap := testutil.Take(t, p.PID)
			dir := t.TempDir()
			_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Logger: testLogger(t)})
			var ue *source.UnsupportedFDError
			if !errors.As(err, &ue) {
				t.Fatalf("dump: %v (%T), want *source.UnsupportedFDError", err, err)
			}
			if ue.PID != p.PID || ue.FD != fd || !strings.HasPrefix(ue.Kind, "socket:[") {
				t.Errorf("UnsupportedFDError %+v, want pid %d, fd %d, socket:[...]", ue, p.PID, fd)
			}
			t.Logf("refused as expected: %v", err)
			testutil.RequireRunning(t, p.PID)
			if d := snap.Diff(testutil.Take(t, p.PID), 1, 2); d != "" {
				t.Errorf("the process changed after the refused dump:\n%s", d)
			}
			if _, err := os.Stat(filepath.Join(dir, core.MetaFile)); err == nil {
				t.Errorf("a refused dump wrote %s", core.MetaFile)
			}
			p.WaitTick(t, short, p.LastTick(t)+3)
		})
	}
}

// TestSocketPairTree: a stream and a datagram socketpair between a parent
// and its child, with unread data both ways, and a listening socket they
// share. After a dump of the tree and restore, each process finds its
// bytes, the pairs join the two processes again, and the listener is one
// socket in both.
func TestSocketPairTree(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "sock_tree"))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	var child int
	fmt.Sscanf(field(t, ready, "child"), "%d", &child)
	p.WaitTick(t, short, 3)
	// Without its child the parent's ends lead outside the dump.
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != p.PID {
		t.Fatalf("dump of the parent alone: %v (%T), want *source.UnsupportedFDError", err, err)
	}
	t.Logf("refused as expected: %v", err)
	p.WaitTick(t, short, p.LastTick(t)+3)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reap(t)
	testutil.ReapOrphan(t, child)
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Tree) != 1 || img.Tree[0].PID != child {
		t.Fatalf("image tree %d processes, want the child %d", len(img.Tree), child)
	}
	// The restored child is the restored parent's; once the parent is
	// stopped it comes to the test process, which reaps it.
	t.Cleanup(func() { testutil.ReapOrphan(t, child) })
	r := restoreOK(t, dir, p.Log)
	both := func(sig unix.Signal, lines ...string) {
		t.Helper()
		n := len(r.Lines(t))
		r.Signal(t, sig)
		if err := unix.Kill(child, sig); err != nil {
			t.Fatalf("signal the restored child %d: %v", child, err)
		}
		for _, want := range lines {
			f := strings.Fields(want)
			if got, _ := r.WaitLine(t, short, n, f[0]+" "+f[1]); got != want {
				t.Errorf("%q, want %q", got, want)
			}
		}
	}
	both(unix.SIGUSR1, "check parent got=to-parent,dgram-to-parent listening=1", "check child got=to-child,dgram-to-child listening=1")
	both(unix.SIGUSR2, "sent parent", "sent child")
	both(unix.SIGUSR1, "check parent got=again-child,again-child listening=1", "check child got=again-parent,again-parent listening=1")
}
