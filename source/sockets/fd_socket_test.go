package sockets

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

var recordDiag = flag.Bool("record-diag", false, "record sock_diag replies of live sockets into testdata/unix_diag")

// TestMain: see testutil.Main.
func TestMain(m *testing.M) { testutil.Main(m) }

// short bounds the waits for a fixture.
const short = 10 * time.Second

// sockDumper dumps sockets of the test process itself: the code path is
// the one of a real dump (sock_diag, peeks on a duplicate, blobs), with
// the test's own sockets in place of a frozen process's.
type sockDumper struct {
	t     *testing.T
	p     *Process
	dir   string
	blobs int
}

func newSockDumper(t *testing.T) *sockDumper {
	t.Helper()
	sd := &sockDumper{t: t, dir: t.TempDir()}
	sd.p = &Process{PID: os.Getpid(), Log: slog.New(slog.DiscardHandler), Store: sd.store, Conns: &Conns{}}
	return sd
}

// store keeps a blob as a file under dir, as a dump does.
func (sd *sockDumper) store(kind string, r io.Reader) (string, error) {
	sd.blobs++
	name := fmt.Sprintf("%s-%d", kind, sd.blobs)
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	return name, os.WriteFile(filepath.Join(sd.dir, name), b, 0o600)
}

// dump describes fd as the dump of a process describes its fd.
func (sd *sockDumper) dump(fd int) (*core.Socket, error) {
	sd.t.Helper()
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		sd.t.Fatal(err)
	}
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		sd.t.Fatal(err)
	}
	dup := os.NewFile(uintptr(nfd), target)
	defer dup.Close()
	f := &core.FD{FD: fd, Kind: core.FDSocket}
	// As collectFDs: the sock_diag socket is kept for the process's
	// sockets, let go of once they are described.
	defer sd.p.Close()
	if err := sd.p.Describe(f, dup); err != nil {
		return nil, err
	}
	if err := sd.p.ReadOptions(); err != nil {
		return nil, err
	}
	return f.Socket, nil
}

func (sd *sockDumper) mustDump(fd int) *core.Socket {
	sd.t.Helper()
	s, err := sd.dump(fd)
	if err != nil {
		sd.t.Fatalf("dump fd %d: %v", fd, err)
	}
	return s
}

func (sd *sockDumper) queue(s *core.Socket) []byte {
	sd.t.Helper()
	if s.Queue == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(sd.dir, s.Queue))
	if err != nil {
		sd.t.Fatal(err)
	}
	return b
}

func (sd *sockDumper) dgrams(s *core.Socket) []string {
	sd.t.Helper()
	msgs, err := core.SplitDgrams(sd.queue(s))
	if err != nil {
		sd.t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m))
	}
	return out
}

func requireRefused(t *testing.T, err error, fd int) *UnsupportedError {
	t.Helper()
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump of fd %d: error %v (%T), want *UnsupportedError", fd, err, err)
	}
	if ue.FD != fd || ue.PID != os.Getpid() || !strings.HasPrefix(ue.Kind, "socket:[") {
		t.Errorf("UnsupportedError %+v, want fd %d of pid %d, kind socket:[...]", ue, fd, os.Getpid())
	}
	t.Logf("refused as expected: %v", err)
	return ue
}

func pair(t *testing.T, typ int) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

func sock(t *testing.T, family, typ, proto int) int {
	t.Helper()
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func ino(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func write(t *testing.T, fd int, s string) {
	t.Helper()
	if n, err := unix.Write(fd, []byte(s)); err != nil || n != len(s) {
		t.Fatalf("write %q: %d, %v", s, n, err)
	}
}

// readAll reads what is queued on fd without blocking.
func readAll(t *testing.T, fd int) string {
	t.Helper()
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || n == 0 && err == nil {
			return string(out)
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		out = append(out, buf[:n]...)
	}
}

func ownFDCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestDumpUnixPeerClosed: a connected unix socket whose peer was closed
// (sock_diag: peer inode 0, this end shut down both ways for a stream or
// seqpacket one) is dumped with PeerGone, not refused: it reads what is
// left, then end of file (or its next send fails).
func TestDumpUnixPeerClosed(t *testing.T) {
	sd := newSockDumper(t)
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		p := pair(t, typ)
		unix.Close(p[1])
		s := sd.mustDump(p[0])
		if !s.PeerGone || s.Peer != 0 {
			t.Errorf("socket type %d, its peer closed: %+v, want PeerGone", typ, s)
		}
	}
}

func TestDumpUnixStreamPair(t *testing.T) {
	sd := newSockDumper(t)
	p := pair(t, unix.SOCK_STREAM)
	write(t, p[0], "to-b:")
	write(t, p[0], "more")
	write(t, p[1], "to-a")
	if err := unix.Shutdown(p[1], unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	// A peek offset of the process's own is put back as it was.
	if err := unix.SetsockoptInt(p[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF, 2); err != nil {
		t.Fatal(err)
	}
	a, b := sd.mustDump(p[0]), sd.mustDump(p[1])
	if a.Family != unix.AF_UNIX || a.Type != unix.SOCK_STREAM || a.State != core.SockConnected {
		t.Errorf("socket a: %+v", a)
	}
	if a.Peer != ino(t, p[1]) || b.Peer != ino(t, p[0]) || a.Ino != ino(t, p[0]) {
		t.Errorf("peers: a %d->%d, b %d->%d; inodes %d %d", a.Ino, a.Peer, b.Ino, b.Peer, ino(t, p[0]), ino(t, p[1]))
	}
	if got := string(sd.queue(a)); got != "to-a" {
		t.Errorf("queue of a %q, want to-a", got)
	}
	if got := string(sd.queue(b)); got != "to-b:more" {
		t.Errorf("queue of b %q, want to-b:more", got)
	}
	if a.Shutdown != core.ShutRecv || b.Shutdown != core.ShutSend {
		t.Errorf("shutdown bits a %d b %d, want %d %d", a.Shutdown, b.Shutdown, core.ShutRecv, core.ShutSend)
	}
	if !slices.ContainsFunc(b.Options, func(o core.SockOpt) bool { return o.Name == unix.SO_PEEK_OFF && o.Value == 2 }) {
		t.Errorf("options of b %+v lack SO_PEEK_OFF 2", b.Options)
	}
	if v, _ := unix.GetsockoptInt(p[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF); v != 2 {
		t.Errorf("SO_PEEK_OFF %d after the dump, was 2", v)
	}
	unix.SetsockoptInt(p[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF, -1)
	// Nothing was consumed.
	if got := readAll(t, p[1]); got != "to-b:more" {
		t.Errorf("b reads %q after the dump", got)
	}
	if got := readAll(t, p[0]); got != "to-a" {
		t.Errorf("a reads %q after the dump", got)
	}
}

func TestDumpUnixDgramQueues(t *testing.T) {
	sd := newSockDumper(t)
	for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_SEQPACKET} {
		t.Run(strconv.Itoa(typ), func(t *testing.T) {
			p := pair(t, typ)
			big := strings.Repeat("x", 100000) // more than the first peek's buffer
			msgs := []string{"one", "", "three", big, "five"}
			for _, m := range msgs {
				write(t, p[0], m)
			}
			s := sd.mustDump(p[1])
			if got := sd.dgrams(s); !slices.Equal(got, msgs) {
				t.Errorf("queued messages: %d of them, want %d (%.20q...)", len(got), len(msgs), got)
			}
			if v, _ := unix.GetsockoptInt(p[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF); v != -1 {
				t.Errorf("SO_PEEK_OFF %d after the dump, was -1", v)
			}
			buf := make([]byte, 200000)
			for i, m := range msgs {
				n, err := unix.Read(p[1], buf)
				if err != nil || string(buf[:n]) != m {
					t.Fatalf("message %d after the dump: %d bytes, %v", i, n, err)
				}
			}
		})
	}
}

// Messages carrying fds or credentials cannot be stored: refused, and the
// fds the peek brought into the agent are closed.
func TestDumpUnixRefusesControlData(t *testing.T) {
	sd := newSockDumper(t)
	p := pair(t, unix.SOCK_STREAM)
	write(t, p[0], "plain")
	if err := unix.Sendmsg(p[0], []byte("fd"), unix.UnixRights(0), nil, 0); err != nil {
		t.Fatal(err)
	}
	before := ownFDCount(t)
	_, err := sd.dump(p[1])
	requireRefused(t, err, p[1])
	if after := ownFDCount(t); after != before {
		t.Errorf("%d fds before the dump, %d after: the peeked fd leaked", before, after)
	}

	q := pair(t, unix.SOCK_DGRAM)
	if err := unix.SetsockoptInt(q[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	write(t, q[0], "with credentials")
	_, err = sd.dump(q[1])
	requireRefused(t, err, q[1])
	if got := readAll(t, q[1]); got != "with credentials" {
		t.Errorf("queue after the refused dump: %q", got)
	}
}

func TestDumpUnixNamed(t *testing.T) {
	sd := newSockDumper(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "listen.sock")
	l := sock(t, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 7); err != nil {
		t.Fatal(err)
	}
	s := sd.mustDump(l)
	if s.State != core.SockListen || s.Backlog != 7 || string(s.Name) != path || s.Local != path {
		t.Errorf("listener: %+v", s)
	}
	if s.File == nil || s.File.Path != path || s.File.Mode != unix.S_IFSOCK|0o640 || s.File.Gone {
		t.Errorf("listener's file: %+v", s.File)
	}

	// A connection waiting to be accepted would be lost: refused.
	c := sock(t, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err := unix.Connect(c, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	_, err := sd.dump(l)
	requireRefused(t, err, l)
	// So is the client's end: its peer, not accepted yet, has no inode
	// (sock_diag says 0, as for a closed peer) and no one can say whose
	// queue it is in; a closed peer would have shut it down both ways.
	_, err = sd.dump(c)
	if ue := requireRefused(t, err, c); !strings.Contains(ue.Reason, "accepted yet") {
		t.Errorf("client before the accept refused for %q, want its peer not accepted yet", ue.Reason)
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	// Client and accepted socket are a pair of the process.
	if cs := sd.mustDump(c); cs.Peer != ino(t, a) || cs.State != core.SockConnected {
		t.Errorf("client: %+v", cs)
	}

	// A name whose file was unlinked.
	g := sock(t, unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	gp := filepath.Join(dir, "gone.sock")
	if err := unix.Bind(g, &unix.SockaddrUnix{Name: gp}); err != nil {
		t.Fatal(err)
	}
	os.Remove(gp)
	if s := sd.mustDump(g); s.State != core.SockBound || s.File == nil || !s.File.Gone {
		t.Errorf("socket whose file is gone: %+v %+v", s, s.File)
	}

	// Abstract, with datagrams from an unnamed sender.
	abs := sock(t, unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	name := fmt.Sprintf("\x00migrate-test-%d", os.Getpid())
	if err := unix.Bind(abs, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	snd := sock(t, unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	for _, m := range []string{"a", "bb"} {
		if err := unix.Sendto(snd, []byte(m), 0, &unix.SockaddrUnix{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	s = sd.mustDump(abs)
	if s.State != core.SockBound || string(s.Name) != name || s.Local != "@"+name[1:] || s.File != nil {
		t.Errorf("abstract socket: %+v", s)
	}
	if got := sd.dgrams(s); !slices.Equal(got, []string{"a", "bb"}) {
		t.Errorf("abstract socket's queue %q", got)
	}
	// A datagram socket connected to it is connected to a socket of the
	// process.
	if err := unix.Connect(snd, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	if s := sd.mustDump(snd); s.State != core.SockConnected || s.Peer != ino(t, abs) {
		t.Errorf("connected sender: %+v", s)
	}
	// The socket it connected to is marked established by the kernel,
	// but has no peer of its own: still just bound.
	if s := sd.mustDump(abs); s.State != core.SockBound || s.Peer != 0 || s.PeerGone {
		t.Errorf("socket a sender connected to: %+v", s)
	}
}

func TestDumpRefusesOtherFamilies(t *testing.T) {
	sd := newSockDumper(t)
	// A netlink protocol a dump does not take, named.
	nl := sock(t, unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_USERSOCK)
	_, err := sd.dump(nl)
	if ue := requireRefused(t, err, nl); !strings.Contains(ue.Reason, "NETLINK_USERSOCK") {
		t.Errorf("the refusal does not name the protocol: %v", ue)
	}
	if pk, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		defer unix.Close(pk)
		_, err = sd.dump(pk)
		requireRefused(t, err, pk)
	}
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err == nil {
		defer unix.Close(raw)
		_, err = sd.dump(raw)
		requireRefused(t, err, raw)
	}
}

func TestDumpInet(t *testing.T) {
	sd := newSockDumper(t)
	l := sock(t, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	set := func(fd, level, name, v int) {
		t.Helper()
		if err := unix.SetsockoptInt(fd, level, name, v); err != nil {
			t.Fatalf("setsockopt %d/%d: %v", level, name, err)
		}
	}
	set(l, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	set(l, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	set(l, unix.SOL_SOCKET, unix.SO_RCVBUF, 100000)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 9); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(l)
	port := sa.(*unix.SockaddrInet4).Port
	s := sd.mustDump(l)
	if s.State != core.SockListen || s.Backlog != 9 || s.Local != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Errorf("listener: %+v", s)
	}
	want := map[string]int{"SO_REUSEADDR": 1, "TCP_NODELAY": 1, "SO_RCVBUF": 200000}
	for _, o := range s.Options {
		if v, ok := want[o.Label]; ok {
			if o.Value != v {
				t.Errorf("%s = %d, want %d", o.Label, o.Value, v)
			}
			delete(want, o.Label)
		}
		if o.Label == "SO_SNDBUF" || o.Label == "TCP_KEEPIDLE" {
			t.Errorf("option %s recorded, but it has its default value", o.Label)
		}
	}
	if len(want) > 0 {
		t.Errorf("options %v missing from %+v", want, s.Options)
	}

	// A connection in the accept queue: refused.
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = sd.dump(l)
	requireRefused(t, err, l)
	// Established: noted for repair, then read in repair mode, then given
	// back working.
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	if _, err := c.Write([]byte("unread by a")); err != nil {
		t.Fatal(err)
	}
	fixturePoll(t, func() bool { n, _ := unix.IoctlGetInt(a, unix.SIOCINQ); return n == 11 })
	es := sd.mustDump(a)
	defer sd.p.Conns.Close()
	if es.State != core.SockConnected || es.TCP == nil || es.Remote != c.LocalAddr().String() {
		t.Fatalf("established socket: %+v", es)
	}
	if err := sd.p.Conns.Repair(sd.store); err != nil {
		t.Fatalf("repair: %v", err)
	}
	tc := es.TCP
	if tc.State != "ESTABLISHED" || tc.RecvLen != 11 || tc.SendLen != 0 || tc.MSS == 0 || !tc.SACK || !tc.Timestamps || !tc.Wscale {
		t.Errorf("repair state: %+v", tc)
	}
	if q, err := os.ReadFile(filepath.Join(sd.dir, tc.RecvQueue)); err != nil || string(q) != "unread by a" {
		t.Errorf("receive queue %q, %v", q, err)
	}
	if err := tc.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	if err := sd.p.Conns.Unrepair(); err != nil {
		t.Fatalf("unrepair: %v", err)
	}
	// The connection works as before: the queue is still there, and
	// both ways carry data.
	buf := make([]byte, 64)
	if n, err := unix.Read(a, buf); err != nil || string(buf[:n]) != "unread by a" {
		t.Errorf("read after repair: %q, %v", buf[:n], err)
	}
	if _, err := unix.Write(a, []byte("back")); err != nil {
		t.Errorf("write after repair: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "back" {
		t.Errorf("peer read after repair: %q, %v", buf[:n], err)
	}

	// IPv6, bound, not listening; unbound TCP; UDP connected.
	b6 := sock(t, unix.AF_INET6, unix.SOCK_STREAM, 0)
	set(b6, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	if err := unix.Bind(b6, &unix.SockaddrInet6{Addr: netipLoopback6()}); err != nil {
		t.Fatal(err)
	}
	if s := sd.mustDump(b6); s.State != core.SockBound || !strings.HasPrefix(s.Local, "[::1]:") ||
		!slices.ContainsFunc(s.Options, func(o core.SockOpt) bool { return o.Label == "IPV6_V6ONLY" && o.Value == 1 }) {
		t.Errorf("bound IPv6 socket: %+v", s)
	}
	u := sock(t, unix.AF_INET6, unix.SOCK_STREAM, 0)
	if s := sd.mustDump(u); s.State != core.SockUnbound || s.Local != "" {
		t.Errorf("unbound socket: %+v", s)
	}
	d := sock(t, unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err := unix.Connect(d, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9}); err != nil {
		t.Fatal(err)
	}
	if s := sd.mustDump(d); s.State != core.SockConnected || s.Remote != "127.0.0.1:9" || !strings.HasPrefix(s.Local, "127.0.0.1:") {
		t.Errorf("connected UDP socket: %+v", s)
	}
}

func netipLoopback6() [16]byte {
	var a [16]byte
	a[15] = 1
	return a
}

// Recorded sock_diag replies (testdata/unix_diag/NAME.reply) decode to what
// was recorded next to them (NAME.json). Record again with
//
//	go test ./source/sockets -run TestUnixDiagRecorded -record-diag
func TestUnixDiagRecorded(t *testing.T) {
	dir := filepath.Join("testdata", "unix_diag")
	if *recordDiag {
		recordUnixDiag(t, dir)
	}
	replies, _ := filepath.Glob(filepath.Join(dir, "*.reply"))
	if len(replies) == 0 {
		t.Fatal("no recorded replies in " + dir)
	}
	for _, r := range replies {
		name := strings.TrimSuffix(filepath.Base(r), ".reply")
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(r)
			if err != nil {
				t.Fatal(err)
			}
			got := decodeForRecord(b)
			want, err := os.ReadFile(strings.TrimSuffix(r, ".reply") + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
				t.Errorf("decoded\n%s\nrecorded\n%s", got, want)
			}
		})
	}
}

// decodeForRecord is the decoded reply as JSON (messages, done, error).
func decodeForRecord(b []byte) []byte {
	msgs, done, err := parseUnixDiag(b)
	out := struct {
		Msgs  []unixDiag
		Done  bool
		Error string `json:",omitempty"`
	}{msgs, done, ""}
	if err != nil {
		out.Error = err.Error()
	}
	j, _ := json.MarshalIndent(out, "", "  ")
	return j
}

func recordUnixDiag(t *testing.T, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dc, err := openDiag(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	save := func(name string, fd int, show uint32) {
		b, err := dc.query(uint32(ino(t, fd)), show)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".reply"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), append(decodeForRecord(b), '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := pair(t, unix.SOCK_STREAM)
	write(t, p[0], "hello")
	unix.Shutdown(p[0], unix.SHUT_WR)
	save("stream-pair", p[1], unixDiagShowAll|udiagShowIcons)
	tmp := t.TempDir()
	l := sock(t, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	unix.Bind(l, &unix.SockaddrUnix{Name: filepath.Join(tmp, "l.sock")})
	unix.Listen(l, 5)
	c := sock(t, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	unix.Connect(c, &unix.SockaddrUnix{Name: filepath.Join(tmp, "l.sock")})
	save("listener-path", l, unixDiagShowAll|udiagShowIcons)
	a := sock(t, unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	unix.Bind(a, &unix.SockaddrUnix{Name: "\x00migrate-diag-record"})
	save("dgram-abstract", a, unixDiagShowAll)
	q := pair(t, unix.SOCK_SEQPACKET)
	write(t, q[0], "msg")
	unix.Close(q[0])
	save("seqpacket-peer-gone", q[1], unixDiagShowAll)
	// An inode no socket has: the kernel answers with an error message.
	b, err := dc.query(1, unixDiagShowAll)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "no-such-socket.reply"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "no-such-socket.json"), append(decodeForRecord(b), '\n'), 0o644)
}

func TestParseUnixDiagMalformed(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "unix_diag", "listener-path.reply"))
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(good); n++ {
		if _, _, err := parseUnixDiag(good[:n]); err == nil && n > 0 {
			t.Errorf("reply cut to %d of %d bytes decodes without error", n, len(good))
		}
	}
	cases := map[string][]byte{
		"message length below header": func() []byte {
			b := slices.Clone(good)
			b[0], b[1], b[2], b[3] = 8, 0, 0, 0
			return b
		}(),
		"attribute overruns message": func() []byte {
			b := slices.Clone(good)
			b[16+16], b[16+16+1] = 0xff, 0x0f
			return b
		}(),
		"wrong family": func() []byte {
			b := slices.Clone(good)
			b[16] = unix.AF_INET
			return b
		}(),
	}
	for name, b := range cases {
		var de *DiagError
		if _, _, err := parseUnixDiag(b); !errors.As(err, &de) {
			t.Errorf("%s: error %v, want *DiagError", name, err)
		}
	}
}

func FuzzParseUnixDiag(f *testing.F) {
	replies, _ := filepath.Glob(filepath.Join("testdata", "unix_diag", "*.reply"))
	for _, r := range replies {
		if b, err := os.ReadFile(r); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, _, err := parseUnixDiag(b)
		if err != nil {
			return
		}
		for _, m := range msgs {
			if len(m.Name) > 108 || len(m.Icons) > maxDiagIcons {
				t.Fatalf("decoded %+v from %d bytes", m, len(b))
			}
		}
	})
}

// The sock_diag socket is opened in the network namespace of the process,
// where its sockets are: a process started in a new network namespace has
// each of its unix sockets found there and none in the test's. (The dump
// of such a process is refused: source's TestDumpOtherNetns.)
func TestDiagOtherNetns(t *testing.T) {
	testutil.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("no unshare(1) to start a process in a new network namespace: %v", err)
	}
	p := testutil.Start(t, unshare, "--net", testutil.Build(t, "sock_pair"), t.TempDir())
	p.WaitLine(t, short, 0, "ready")
	if same, err := sameNetns(p.PID); err != nil || same {
		t.Fatalf("process %d in the test's network namespace (%v)", p.PID, err)
	}
	socks, err := Inodes(p.PID)
	if err != nil || len(socks) == 0 {
		t.Fatalf("sockets of %d: %v %v", p.PID, socks, err)
	}
	ours, err := openDiag(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	theirs, err := openDiag(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	for ino := range socks {
		if _, err := ours.lookupUnix(uint32(ino), unixDiagShowAll); !errors.Is(err, errNoSocket) {
			t.Errorf("socket:[%d] found in the test's namespace: %v", ino, err)
		}
		if _, err := theirs.lookupUnix(uint32(ino), unixDiagShowAll); err != nil {
			t.Errorf("socket:[%d] not found in the process's namespace: %v", ino, err)
		}
	}
	if same, err := sameNetns(os.Getpid()); err != nil || !same {
		t.Errorf("a thread of the test process was left in another namespace")
	}
}

// fixturePoll waits up to 5 s for cond.
func fixturePoll(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("timed out")
}

// TestDumpNetlink: a route socket bound to an explicit port id, in groups
// below and above 32, with flags and a buffer size set, and a generic one
// the kernel bound at its first send, connected to the kernel: the dump
// reads back each one's port id, groups, destination and options.
func TestDumpNetlink(t *testing.T) {
	sd := newSockDumper(t)
	rt := sock(t, unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
	port := uint32(0x7ff00000 + os.Getpid()%0x10000)
	if err := unix.Bind(rt, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: port, Groups: unix.RTMGRP_LINK}); err != nil {
		t.Fatal(err)
	}
	const brvlan = 33 // RTNLGRP_BRVLAN: past the 32 bind takes
	for _, o := range [][2]int{{unix.NETLINK_ADD_MEMBERSHIP, brvlan}, {unix.NETLINK_EXT_ACK, 1}, {unix.NETLINK_NO_ENOBUFS, 1}} {
		if err := unix.SetsockoptInt(rt, unix.SOL_NETLINK, o[0], o[1]); err != nil {
			t.Fatal(err)
		}
	}
	// A request whose answer is left unread: the memory it holds is noted
	// (the restore warns that it is dropped).
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(req, uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.RTM_GETLINK)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[unix.NLMSG_HDRLEN+4:], 1) // ifi_index: lo
	if err := unix.Sendto(rt, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	s := sd.mustDump(rt)
	if s.Netlink == nil || s.Netlink.Unread == 0 {
		t.Errorf("route socket with an answer queued: unread %+v", s.Netlink)
	}
	if s.Netlink == nil || s.Netlink.PortID != port || s.State != core.SockBound || fmt.Sprint(s.Netlink.Groups) != fmt.Sprint([]uint32{unix.RTNLGRP_LINK, brvlan}) {
		t.Fatalf("route socket: %+v %+v", s, s.Netlink)
	}
	for _, name := range []int{unix.NETLINK_EXT_ACK, unix.NETLINK_NO_ENOBUFS} {
		if s.Option(unix.SOL_NETLINK, name) != 1 {
			t.Errorf("route socket: option %d not recorded: %+v", name, s.Options)
		}
	}
	gn := sock(t, unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_GENERIC)
	if err := unix.Connect(gn, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	s = sd.mustDump(gn)
	sa, err := unix.Getsockname(gn)
	if err != nil {
		t.Fatal(err)
	}
	if s.Netlink == nil || s.Netlink.PortID == 0 || s.Netlink.PortID != sa.(*unix.SockaddrNetlink).Pid || len(s.Netlink.Groups) != 0 {
		t.Fatalf("generic socket: %+v %+v", s, s.Netlink)
	}
	if err := s.Netlink.Validate(); err != nil {
		t.Error(err)
	}
}

// TestAuditDaemon: AUDIT_GET answers, with the PID of the audit daemon
// (0 if none), where the kernel has audit.
func TestAuditDaemon(t *testing.T) {
	pid, err := auditDaemon()
	if errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Skipf("no audit in this kernel: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("audit daemon: pid %d", pid)
}
