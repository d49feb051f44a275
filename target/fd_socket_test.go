package target

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// These tests rebuild sockets from descriptions written by hand, as an
// image would hold them, in the test process itself, and check what the
// rebuilt sockets do.

type sockRestore struct {
	t     *testing.T
	r     *restorer
	blobs int
}

func newSockRestore(t *testing.T) *sockRestore {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, core.FilesDir), 0o700); err != nil {
		t.Fatal(err)
	}
	img := &core.Image{Process: core.Process{PID: os.Getpid()}}
	ss := &session{dir: dir, img: img, log: slog.New(slog.DiscardHandler)}
	r := &restorer{session: ss, proc: &img.Process, pid: img.Process.PID}
	t.Cleanup(ss.closeFiles)
	return &sockRestore{t: t, r: r}
}

// blob stores a queue and returns its name.
func (sr *sockRestore) blob(data []byte) string {
	sr.t.Helper()
	sr.blobs++
	name := fmt.Sprintf("%s/sockq-%d", core.FilesDir, sr.blobs)
	if err := os.WriteFile(filepath.Join(sr.r.dir, name), data, 0o600); err != nil {
		sr.t.Fatal(err)
	}
	sum, err := core.HashBlob(bytes.NewReader(data))
	if err != nil {
		sr.t.Fatal(err)
	}
	if sr.r.img.Blobs == nil {
		sr.r.img.Blobs = map[string]core.Blob{}
	}
	sr.r.img.Blobs[name] = sum
	return name
}

func (sr *sockRestore) dgrams(msgs ...string) string {
	var b []byte
	for _, m := range msgs {
		b = core.AppendDgram(b, []byte(m))
	}
	return sr.blob(b)
}

func (sr *sockRestore) add(fd int, s *core.Socket) {
	sr.r.proc.FDs = append(sr.r.proc.FDs, core.FD{FD: fd, Kind: core.FDSocket, Flags: unix.O_RDWR, Socket: s})
}

func (sr *sockRestore) open(fd int) (*os.File, error) {
	sr.t.Helper()
	for i := range sr.r.proc.FDs {
		if f := &sr.r.proc.FDs[i]; f.FD == fd {
			file, err := sr.r.openSocket(f)
			if file != nil {
				sr.t.Cleanup(func() { file.Close() })
			}
			return file, err
		}
	}
	sr.t.Fatalf("no fd %d in the image", fd)
	return nil, nil
}

func (sr *sockRestore) mustOpen(fd int) int {
	sr.t.Helper()
	f, err := sr.open(fd)
	if err != nil {
		sr.t.Fatalf("open fd %d: %v", fd, err)
	}
	return int(f.Fd())
}

func send(t *testing.T, fd int, s string) {
	t.Helper()
	if n, err := unix.SendmsgN(fd, []byte(s), nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err != nil || n != len(s) {
		t.Fatalf("send %q: %d, %v", s, n, err)
	}
}

// recv reads one message (or what a stream has) without blocking: its
// text, or "EOF", or the error.
func recv(fd int) string {
	buf := make([]byte, 200000)
	n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
	switch {
	case err != nil:
		return "error " + err.Error()
	case n == 0:
		return "EOF"
	}
	return string(buf[:n])
}

func recvWait(fd int) string {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	unix.Poll(pfd, 2000)
	return recv(fd)
}

func TestRestoreUnixStreamPair(t *testing.T) {
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 100, Peer: 101, State: core.SockConnected,
		Queue: sr.blob([]byte("to-a")), Shutdown: core.ShutRecv})
	sr.add(4, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 101, Peer: 100, State: core.SockConnected,
		Queue: sr.blob([]byte("to-b:more")), Shutdown: core.ShutSend})
	sr.r.proc.FDs[1].Flags |= unix.O_NONBLOCK
	a, b := sr.mustOpen(3), sr.mustOpen(4)
	if got := recv(a); got != "to-a" {
		t.Errorf("a reads %q, want to-a", got)
	}
	if got := recv(a); got != "EOF" {
		t.Errorf("a reads %q after its queue, want EOF (b shut its sending side)", got)
	}
	if got := recv(b); got != "to-b:more" {
		t.Errorf("b reads %q, want to-b:more", got)
	}
	if _, err := unix.SendmsgN(b, []byte("x"), nil, nil, unix.MSG_NOSIGNAL); !errors.Is(err, unix.EPIPE) {
		t.Errorf("b sends after shutdown: %v, want EPIPE", err)
	}
	send(t, a, "still")
	if got := recv(b); got != "still" {
		t.Errorf("b reads %q, want still", got)
	}
	if fl, _ := unix.FcntlInt(uintptr(b), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Errorf("b lost O_NONBLOCK: flags %#o", fl)
	}
	if fl, _ := unix.FcntlInt(uintptr(a), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 {
		t.Errorf("a got O_NONBLOCK: flags %#o", fl)
	}
	if len(sr.r.warnings) > 0 {
		t.Errorf("warnings: %q", sr.r.warnings)
	}
}

func TestRestoreUnixMessagePairs(t *testing.T) {
	big := strings.Repeat("y", 100000)
	for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_SEQPACKET} {
		t.Run(fmt.Sprint(typ), func(t *testing.T) {
			sr := newSockRestore(t)
			msgs := []string{"one", "", big, "four"}
			sr.add(5, &core.Socket{Family: unix.AF_UNIX, Type: typ, Ino: 7, Peer: 8, State: core.SockConnected, Queue: sr.dgrams(msgs...)})
			sr.add(6, &core.Socket{Family: unix.AF_UNIX, Type: typ, Ino: 8, Peer: 7, State: core.SockConnected, Queue: sr.dgrams("back")})
			a, b := sr.mustOpen(5), sr.mustOpen(6)
			for i, m := range msgs {
				if got := recv(a); got != m && !(m == "" && got == "EOF") {
					t.Errorf("message %d: %.20q, want %.20q", i, got, m)
				}
			}
			if got := recv(b); got != "back" {
				t.Errorf("b reads %q", got)
			}
			send(t, b, "new")
			if got := recv(a); got != "new" {
				t.Errorf("a reads %q, want new", got)
			}
		})
	}
}

func TestRestoreUnixPeerGone(t *testing.T) {
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 1, State: core.SockConnected, PeerGone: true,
		Queue: sr.blob([]byte("bye")), Shutdown: core.ShutRecv | core.ShutSend})
	sr.add(4, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 2, State: core.SockConnected, PeerGone: true, Reset: true,
		Queue: sr.blob([]byte("bye")), Shutdown: core.ShutRecv | core.ShutSend})
	sr.add(5, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 3, State: core.SockConnected, PeerGone: true,
		Queue: sr.dgrams("last")})
	a, b, c := sr.mustOpen(3), sr.mustOpen(4), sr.mustOpen(5)
	if got := []string{recv(a), recv(a)}; !slices.Equal(got, []string{"bye", "EOF"}) {
		t.Errorf("peer closed: reads %q, want bye, EOF", got)
	}
	if got := []string{recv(b), recv(b)}; !slices.Equal(got, []string{"bye", "error " + unix.ECONNRESET.Error()}) {
		t.Errorf("peer closed with unread bytes: reads %q, want bye, ECONNRESET", got)
	}
	if got := recv(c); got != "last" {
		t.Errorf("datagram socket whose peer is gone reads %q", got)
	}
	if _, err := unix.SendmsgN(c, []byte("x"), nil, nil, unix.MSG_DONTWAIT); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("send on a datagram socket whose peer is gone: %v, want ECONNREFUSED", err)
	}
}

// staleSocketFile leaves a socket file nobody listens on at path.
func staleSocketFile(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
}

func TestRestoreUnixListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	staleSocketFile(t, path)
	listener := func() *core.Socket {
		return &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 9, State: core.SockListen, Backlog: 5,
			Name: []byte(path), Local: path, File: &core.SockFile{Path: path, Mode: unix.S_IFSOCK | 0o640, UID: 12, GID: 34}}
	}
	sr := newSockRestore(t)
	sr.add(3, listener())
	l := sr.mustOpen(3)
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != unix.S_IFSOCK|0o640 || st.Uid != 12 || st.Gid != 34 {
		t.Errorf("socket file mode %#o owner %d:%d, want %#o 12:34", st.Mode, st.Uid, st.Gid, unix.S_IFSOCK|0o640)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect to the rebuilt listener: %v", err)
	}
	c.Close()
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	unix.Close(a)

	// While it listens, the path is in use.
	sr2 := newSockRestore(t)
	sr2.add(3, listener())
	_, err = sr2.open(3)
	var ae *AddrError
	if !errors.As(err, &ae) || ae.FD != 3 || ae.Addr != path || !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("restore onto a live socket's path: %v, want *AddrError for fd 3, %s, EADDRINUSE", err, path)
	}
	// A file of another kind is not removed.
	other := filepath.Join(t.TempDir(), "file")
	os.WriteFile(other, []byte("keep"), 0o600)
	sr3 := newSockRestore(t)
	s := listener()
	s.Name, s.File.Path = []byte(other), other
	sr3.add(3, s)
	if _, err := sr3.open(3); !errors.As(err, &ae) {
		t.Errorf("restore onto a regular file's path: %v, want *AddrError", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "keep" {
		t.Errorf("the regular file was changed")
	}
}

// TestRestoreUnixSocketFileSwapped: the restore gives a bound socket's
// file its mode and owner without going through its path again: a symlink
// or a hard link put in the socket's place right after the bind (by a user
// who can write the directory) does not make the restore change the file
// it leads to. Without a swap the file has the mode, whatever the umask,
// and the owner.
func TestRestoreUnixSocketFileSwapped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (socket file owners)")
	}
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	listener := func(path string) *core.Socket {
		return &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_STREAM, Ino: 9, State: core.SockListen, Backlog: 5,
			Name: []byte(path), Local: path, File: &core.SockFile{Path: path, Mode: unix.S_IFSOCK | 0o777, UID: 12, GID: 34}}
	}
	for _, swap := range []string{"none", "symlink", "hard link"} {
		t.Run(swap, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "l.sock")
			victim := filepath.Join(dir, "victim")
			if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			sr := newSockRestore(t)
			sr.r.afterBind = func(p string) {
				switch swap {
				case "symlink":
					os.Remove(p)
					if err := os.Symlink(victim, p); err != nil {
						t.Error(err)
					}
				case "hard link":
					os.Remove(p)
					if err := os.Link(victim, p); err != nil {
						t.Error(err)
					}
				}
			}
			sr.add(3, listener(path))
			sr.mustOpen(3)
			var st unix.Stat_t
			if err := unix.Stat(victim, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != unix.S_IFREG|0o600 || st.Uid != 0 || st.Gid != 0 {
				t.Errorf("the file a %s led to: mode %#o owner %d:%d, want it untouched (%#o 0:0)", swap, st.Mode, st.Uid, st.Gid, unix.S_IFREG|0o600)
			}
			if swap != "none" {
				return
			}
			if err := unix.Lstat(path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != unix.S_IFSOCK|0o777 || st.Uid != 12 || st.Gid != 34 {
				t.Errorf("socket file mode %#o owner %d:%d, want %#o 12:34", st.Mode, st.Uid, st.Gid, unix.S_IFSOCK|0o777)
			}
		})
	}
}

func TestRestoreUnixNamedDgram(t *testing.T) {
	sr := newSockRestore(t)
	server := fmt.Sprintf("\x00migrate-test-%d-server", os.Getpid())
	client := fmt.Sprintf("\x00migrate-test-%d-client", os.Getpid())
	// A server with datagrams from strangers, a client connected to it
	// with one datagram from the server, and a client whose file is gone.
	gone := filepath.Join(t.TempDir(), "gone.sock")
	sr.add(3, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 1, State: core.SockBound, Name: []byte(server), Queue: sr.dgrams("a", "bb")})
	sr.add(4, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 2, State: core.SockConnected, Peer: 1, Name: []byte(client), Queue: sr.dgrams("from-server")})
	sr.add(5, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 3, State: core.SockConnected, Peer: 1, Name: []byte(gone),
		File: &core.SockFile{Path: gone, Gone: true}})
	s, c, g := sr.mustOpen(3), sr.mustOpen(4), sr.mustOpen(5)
	if got := []string{recv(s), recv(s), recv(s)}; !slices.Equal(got, []string{"a", "bb", "error " + unix.EAGAIN.Error()}) {
		t.Errorf("server reads %q", got)
	}
	if got := recv(c); got != "from-server" {
		t.Errorf("client reads %q", got)
	}
	send(t, c, "hello")
	send(t, g, "from-gone")
	if got := []string{recv(s), recv(s)}; !slices.Equal(got, []string{"hello", "from-gone"}) {
		t.Errorf("server reads %q from its clients", got)
	}
	if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file of a name that had lost it is back: %v", err)
	}
	if sa, err := unix.Getsockname(g); err != nil || sa.(*unix.SockaddrUnix).Name != gone {
		t.Errorf("getsockname of the socket whose file is gone: %v %v", sa, err)
	}
}

func TestRestoreUnixOutsidePeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.sock")
	out, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(out)
	if err := unix.Bind(out, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 1, State: core.SockConnected, PeerName: []byte(path), Remote: path})
	sr.add(4, &core.Socket{Family: unix.AF_UNIX, Type: unix.SOCK_DGRAM, Ino: 2, State: core.SockConnected, PeerName: []byte(path + ".gone"), Remote: path + ".gone"})
	a, b := sr.mustOpen(3), sr.mustOpen(4)
	send(t, a, "log line")
	if got := recv(out); got != "log line" {
		t.Errorf("outside peer reads %q", got)
	}
	if _, err := unix.Getpeername(b); !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("socket whose outside peer is gone: getpeername %v, want ENOTCONN", err)
	}
	if len(sr.r.warnings) != 1 {
		t.Errorf("warnings %q, want one about the peer that is gone", sr.r.warnings)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	if l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", p)); err == nil {
		l6.Close()
	}
	return p
}

func opt(level, name, v int, label string) core.SockOpt {
	return core.SockOpt{Level: level, Name: name, Value: v, Label: label}
}

func TestRestoreTCPListeners(t *testing.T) {
	port := freePort(t)
	opts := []core.SockOpt{
		opt(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"),
		opt(unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"),
		opt(unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"),
		opt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30, "TCP_KEEPIDLE"),
		opt(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 5, "TCP_KEEPINTVL"),
		opt(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3, "TCP_KEEPCNT"),
		opt(unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 7, "TCP_DEFER_ACCEPT"),
		opt(unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 16, "TCP_FASTOPEN"),
		opt(unix.IPPROTO_IP, unix.IP_TOS, 0x10, "IP_TOS"),
		opt(unix.SOL_SOCKET, unix.SO_MARK, 42, "SO_MARK"),
		opt(unix.SOL_SOCKET, unix.SO_RCVBUF, 200000, "SO_RCVBUF"),
		// Above net.core.wmem_max: the process forced it.
		opt(unix.SOL_SOCKET, unix.SO_SNDBUF, 20<<20, "SO_SNDBUF"),
	}
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP, State: core.SockListen,
		Local: fmt.Sprintf("127.0.0.1:%d", port), Backlog: 7, Options: opts})
	sr.add(4, &core.Socket{Family: unix.AF_INET6, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP, State: core.SockListen,
		Local: fmt.Sprintf("[::1]:%d", port), Backlog: 3, Options: append(slices.Clone(opts), opt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1, "IPV6_V6ONLY"))})
	sr.add(5, &core.Socket{Family: unix.AF_INET6, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP, State: core.SockUnbound})
	for i, fdnum := range []int{3, 4} {
		fd := sr.mustOpen(fdnum)
		for _, o := range sr.r.proc.FDs[i].Socket.Options {
			if got, err := unix.GetsockoptInt(fd, o.Level, o.Name); err != nil || got != o.Value {
				t.Errorf("fd %d: %s reads %d (%v), want %d", fdnum, o.Label, got, err, o.Value)
			}
		}
		ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil || ti.State != 10 || int(ti.Sacked) != sr.r.proc.FDs[i].Socket.Backlog {
			t.Errorf("fd %d: tcp_info %+v %v, want LISTEN with backlog %d", fdnum, ti, err, sr.r.proc.FDs[i].Socket.Backlog)
		}
		if v, _ := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND); v != 0 {
			t.Errorf("fd %d: IP_FREEBIND left on", fdnum)
		}
	}
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Errorf("connect to %s: %v", addr, err)
			continue
		}
		c.Close()
	}
	if fd := sr.mustOpen(5); true {
		if sa, err := unix.Getsockname(fd); err != nil || sa.(*unix.SockaddrInet6).Port != 0 {
			t.Errorf("unbound socket: %v %v", sa, err)
		}
	}
	if len(sr.r.warnings) > 0 {
		t.Errorf("warnings: %q", sr.r.warnings)
	}
}

// TIME_WAIT connections of the dead original hold the port: a listener
// that had no SO_REUSEADDR is bound with it for the moment.
func TestRestoreTCPTimeWait(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close() // the server closes first: its end goes to TIME_WAIT
	c.Read(make([]byte, 1))
	c.Close()
	l.Close()
	// Go's listener sets SO_REUSEADDR; check that a bind without it fails.
	probe, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	port := l.Addr().(*net.TCPAddr).Port
	err = unix.Bind(probe, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port})
	unix.Close(probe)
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Skipf("no TIME_WAIT conflict on %s (bind: %v)", addr, err)
	}
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP, State: core.SockListen, Local: addr, Backlog: 4})
	fd := sr.mustOpen(3)
	if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 0 {
		t.Errorf("SO_REUSEADDR left on")
	}
	if len(sr.r.warnings) != 1 {
		t.Errorf("warnings %q, want one about SO_REUSEADDR", sr.r.warnings)
	}
}

func TestRestoreAddrErrors(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name    string
		family  int
		local   string
		options []core.SockOpt
		ok      bool
		errno   error
	}{
		// An address not (yet) here is bound all the same, with a warning:
		// the service address comes with a pre-resume hook.
		{"not here v4", unix.AF_INET, "192.0.2.1:80", nil, true, nil},
		{"not here v6", unix.AF_INET6, "[2001:db8::1]:80", nil, true, nil},
		{"not here, freebind", unix.AF_INET, "192.0.2.1:80", []core.SockOpt{opt(unix.IPPROTO_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND")}, true, nil},
		{"in use", unix.AF_INET, busy.Addr().String(), nil, false, unix.EADDRINUSE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := newSockRestore(t)
			sr.add(7, &core.Socket{Family: tc.family, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP, State: core.SockListen,
				Local: tc.local, Backlog: 1, Options: tc.options})
			_, err := sr.open(7)
			if tc.ok {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				freebind := len(tc.options) > 0
				if warned := len(sr.r.warnings) > 0; warned == freebind {
					t.Errorf("warnings %q (the process asked for IP_FREEBIND: %v)", sr.r.warnings, freebind)
				}
				return
			}
			var ae *AddrError
			if !errors.As(err, &ae) || ae.FD != 7 || ae.Addr != tc.local {
				t.Fatalf("open: %v (%T), want *AddrError for fd 7, %s", err, err, tc.local)
			}
			if tc.errno != nil && !errors.Is(err, tc.errno) {
				t.Errorf("error %v does not wrap %v", err, tc.errno)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
}

func TestRestoreUDP(t *testing.T) {
	port := freePort(t)
	sr := newSockRestore(t)
	sr.add(3, &core.Socket{Family: unix.AF_INET, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP, State: core.SockConnected,
		Local: fmt.Sprintf("127.0.0.1:%d", port), Remote: "127.0.0.1:9", Unread: 2304,
		Options: []core.SockOpt{opt(unix.SOL_SOCKET, unix.SO_BROADCAST, 1, "SO_BROADCAST")}})
	fd := sr.mustOpen(3)
	sa, err := unix.Getpeername(fd)
	if err != nil || sa.(*unix.SockaddrInet4).Port != 9 {
		t.Errorf("getpeername: %v %v", sa, err)
	}
	if sa, err := unix.Getsockname(fd); err != nil || sa.(*unix.SockaddrInet4).Port != port {
		t.Errorf("getsockname: %v %v", sa, err)
	}
	if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST); v != 1 {
		t.Errorf("SO_BROADCAST %d", v)
	}
	if len(sr.r.warnings) != 1 {
		t.Errorf("warnings %q, want one about the unread datagrams", sr.r.warnings)
	}
}

// FuzzSplitDgrams: a datagram queue blob of an image is outside input.
// SplitDgrams never panics, and what it accepts re-encodes to the same
// bytes.
func FuzzSplitDgrams(f *testing.F) {
	f.Add(core.AppendDgram(core.AppendDgram(nil, []byte("one")), nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{3, 0, 0, 0, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := core.SplitDgrams(b)
		if err != nil {
			if !errors.Is(err, core.ErrBadDgrams) {
				t.Fatalf("error %v does not wrap ErrBadDgrams", err)
			}
			return
		}
		var again []byte
		for _, m := range msgs {
			again = core.AppendDgram(again, m)
		}
		if string(again) != string(b) {
			t.Fatalf("%x decodes to %d messages that encode to %x", b, len(msgs), again)
		}
	})
}

// TestRestoreNetlink: a route socket comes back on its port id, in its
// groups (past 32 too), connected where it was, with its flags, and the
// messages it had queued are said to be dropped; a port id another socket
// holds fails with an *AddrError.
func TestRestoreNetlink(t *testing.T) {
	sr := newSockRestore(t)
	port := uint32(0x7fe00000 + os.Getpid()%0x10000)
	sr.add(10, &core.Socket{Family: unix.AF_NETLINK, Type: unix.SOCK_RAW, Protocol: unix.NETLINK_ROUTE, State: core.SockConnected,
		Options: []core.SockOpt{{Level: unix.SOL_NETLINK, Name: unix.NETLINK_EXT_ACK, Value: 1}},
		Netlink: &core.NetlinkState{PortID: port, Groups: []uint32{unix.RTNLGRP_LINK, 33}, DstGroup: unix.RTNLGRP_LINK, Unread: 1234}})
	f, err := sr.open(10)
	if err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	sa, err := unix.Getsockname(fd)
	if err != nil || sa.(*unix.SockaddrNetlink).Pid != port {
		t.Errorf("port id %+v %v, want %d", sa, err, port)
	}
	if peer, err := unix.Getpeername(fd); err != nil || peer.(*unix.SockaddrNetlink).Groups != 1<<(unix.RTNLGRP_LINK-1) {
		t.Errorf("destination %+v %v, want the link group", peer, err)
	}
	var list [8]byte
	if n, err := raw.GetsockoptBytes(fd, unix.SOL_NETLINK, unix.NETLINK_LIST_MEMBERSHIPS, list[:], 8); err != nil || n < 8 ||
		list[0] != 1<<(unix.RTNLGRP_LINK-1) || list[4] != 1 {
		t.Errorf("groups %x (%v), want the link group and 33", list, err)
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK); err != nil || v != 1 {
		t.Errorf("NETLINK_EXT_ACK %d %v", v, err)
	}
	if !slices.ContainsFunc(sr.r.warnings, func(w string) bool { return strings.Contains(w, "dropped") }) {
		t.Errorf("no warning that the queued messages are dropped: %q", sr.r.warnings)
	}
	// The same port id again, while this one holds it.
	sr.add(11, &core.Socket{Family: unix.AF_NETLINK, Type: unix.SOCK_RAW, Protocol: unix.NETLINK_ROUTE, State: core.SockBound,
		Netlink: &core.NetlinkState{PortID: port}})
	_, err = sr.open(11)
	var ae *AddrError
	if !errors.As(err, &ae) || !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("a port id in use: %v (%T), want an *AddrError with EADDRINUSE", err, err)
	}
}
