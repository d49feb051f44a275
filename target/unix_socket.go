package target

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/raw"
)

// unixBuilder rebuilds every unix socket of the image, in steps that
// follow from what the kernel allows:
//
//  1. create: a socketpair for the two ends of a connection (and for a
//     socket whose peer was closed, with a partner that is closed at the
//     end), a plain socket for the rest;
//  2. bind names, replacing stale socket files, with the files' modes and
//     owners;
//  3. listen;
//  4. refill, from a socket of the agent, the queues of named datagram
//     sockets that will not be connected to a peer of the image (once
//     connected to someone else, they would refuse other senders);
//  5. connect datagram sockets to their peers;
//  6. refill the other queues from the peer, which the kernel always lets
//     through (no max_dgram_qlen limit between peers);
//  7. close the partners of sockets whose peer was gone, apply shutdowns;
//  8. unlink the files of names that had lost theirs, set options.
type unixBuilder struct {
	r        *restorer
	socks    map[uint64]*core.Socket
	fdOf     map[uint64]fdRef // the first fd holding each socket, for messages
	order    []uint64
	files    map[uint64]*os.File // the rebuilt sockets, kept in r.files
	other    map[uint64]*os.File // the other end of a pair: a socket of the image or a partner
	partners map[uint64]*os.File // partners of sockets whose peer is gone
	filled   map[uint64]bool
	unlink   []string
}

func (r *restorer) buildUnix() error {
	b := &unixBuilder{
		r: r, socks: map[uint64]*core.Socket{}, fdOf: map[uint64]fdRef{},
		files: map[uint64]*os.File{}, other: map[uint64]*os.File{},
		partners: map[uint64]*os.File{}, filled: map[uint64]bool{},
	}
	defer func() {
		for _, p := range b.partners {
			p.Close()
		}
	}()
	// The sockets of every process of the tree: a pair may join two.
	for _, pp := range r.img.Processes() {
		for i := range pp.Process.FDs {
			fd := &pp.Process.FDs[i]
			if s := fd.Socket; s != nil && s.Family == unix.AF_UNIX {
				if _, ok := b.socks[s.Ino]; !ok {
					b.socks[s.Ino] = s
					b.fdOf[s.Ino] = fdRef{pp.Process.PID, fd.FD}
					b.order = append(b.order, s.Ino)
				}
			}
		}
	}
	steps := []func() error{b.create, b.bind, b.listen, b.fillUnconnected, b.connect, b.fillFromPeers, b.finish}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// fdRef is an fd of a process of the image.
type fdRef struct{ pid, fd int }

// where names the fd holding a socket in messages: "fd N", with its
// process when that is not the root.
func (b *unixBuilder) where(ino uint64) string {
	ref := b.fdOf[ino]
	if ref.pid == b.r.img.Process.PID {
		return fmt.Sprintf("fd %d", ref.fd)
	}
	return fmt.Sprintf("process %d fd %d", ref.pid, ref.fd)
}

func (b *unixBuilder) errorf(ino uint64, format string, args ...any) error {
	return fmt.Errorf("%s: unix socket: %s", b.where(ino), fmt.Sprintf(format, args...))
}

// connectedPair says whether s is one end of a connection the kernel
// mirrors (stream, seqpacket).
func connectedPair(s *core.Socket) bool {
	return s.State == core.SockConnected && s.Type != unix.SOCK_DGRAM
}

func (b *unixBuilder) create() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if b.files[ino] != nil {
			continue
		}
		switch s.Type {
		case unix.SOCK_STREAM, unix.SOCK_SEQPACKET, unix.SOCK_DGRAM:
		default:
			return b.errorf(ino, "type %d", s.Type)
		}
		switch s.State {
		case core.SockListen:
			if s.Type == unix.SOCK_DGRAM {
				return b.errorf(ino, "a listening datagram socket")
			}
		case core.SockBound, core.SockUnbound:
		case core.SockConnected:
			if s.PeerGone {
				a, p, err := b.pair(ino, s.Type, preparedName(ino), "partner")
				if err != nil {
					return err
				}
				b.files[ino], b.partners[ino], b.other[ino] = b.r.keep(a), p, p
				continue
			}
			if s.Peer == 0 {
				if s.Type != unix.SOCK_DGRAM || len(s.PeerName) == 0 {
					return b.errorf(ino, "connected, but to no peer")
				}
				break
			}
			p := b.socks[s.Peer]
			if p == nil {
				return b.errorf(ino, "its peer socket:[%d] is not in the image", s.Peer)
			}
			if p.Type != s.Type {
				return b.errorf(ino, "its peer socket:[%d] is of another type", s.Peer)
			}
			mutual := p.State == core.SockConnected && p.Peer == ino
			if !mutual && s.Type != unix.SOCK_DGRAM {
				return b.errorf(ino, "its peer socket:[%d] is not connected to it", s.Peer)
			}
			if !mutual {
				if len(p.Name) == 0 {
					return b.errorf(ino, "connected to socket:[%d], which has no name to connect to", s.Peer)
				}
				break
			}
			a, c, err := b.pair(ino, s.Type, preparedName(ino), preparedName(s.Peer))
			if err != nil {
				return err
			}
			b.files[ino], b.files[s.Peer] = b.r.keep(a), b.r.keep(c)
			b.other[ino], b.other[s.Peer] = c, a
			continue
		default:
			return b.errorf(ino, "state %q", s.State)
		}
		fd, err := unix.Socket(unix.AF_UNIX, s.Type|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return b.errorf(ino, "socket: %v", err)
		}
		b.files[ino] = b.r.keep(os.NewFile(uintptr(fd), preparedName(ino)))
	}
	return nil
}

// pair makes a socketpair whose ends are named a and c.
func (b *unixBuilder) pair(ino uint64, typ int, a, c string) (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, b.errorf(ino, "socketpair: %v", err)
	}
	return os.NewFile(uintptr(fds[0]), a), os.NewFile(uintptr(fds[1]), c), nil
}

// address is where a rebuilt socket of the image can be reached.
func address(s *core.Socket) *unix.SockaddrUnix {
	if len(s.Name) > 0 && s.Name[0] != 0 && s.File != nil {
		return &unix.SockaddrUnix{Name: s.File.Path}
	}
	return &unix.SockaddrUnix{Name: string(s.Name)}
}

func (b *unixBuilder) bind() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		// A connected stream socket's name is the listener's (an accepted
		// socket) and cannot be bound twice; it is not restored.
		if len(s.Name) == 0 || connectedPair(s) {
			continue
		}
		if err := b.bindOne(ino, s); err != nil {
			return err
		}
	}
	return nil
}

func (b *unixBuilder) bindOne(ino uint64, s *core.Socket) error {
	fd := int(b.files[ino].Fd())
	if s.Name[0] == 0 {
		if err := unix.Bind(fd, address(s)); err != nil {
			return &AddrError{PID: b.fdOf[ino].pid, FD: b.fdOf[ino].fd, Addr: unixText(s.Name), Err: err}
		}
		return nil
	}
	if s.File == nil {
		return b.errorf(ino, "bound to %s, but the image does not say where its file was", s.Local)
	}
	path := s.File.Path
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return &AddrError{PID: b.fdOf[ino].pid, FD: b.fdOf[ino].fd, Addr: path, Err: unix.ENAMETOOLONG}
	}
	if s.File.Gone {
		// The name had no file any more: bind, then unlink (once every
		// socket connected to it by name is connected).
		if _, err := os.Lstat(path); err == nil {
			return b.bindTemp(ino, s)
		}
		if err := unix.Bind(fd, address(s)); err != nil {
			return &AddrError{PID: b.fdOf[ino].pid, FD: b.fdOf[ino].fd, Addr: path, Err: err}
		}
		b.unlink = append(b.unlink, path)
		return nil
	}
	if err := clearStale(path, s.Type); err != nil {
		return &AddrError{PID: b.fdOf[ino].pid, FD: b.fdOf[ino].fd, Addr: path, Err: err}
	}
	owned, err := bindFile(fd, path, s.File.Mode&0o777, s.File.UID, s.File.GID)
	if err != nil {
		return &AddrError{PID: b.fdOf[ino].pid, FD: b.fdOf[ino].fd, Addr: path, Err: err}
	}
	if !owned {
		b.r.warn("%s: %s: created owned by the restorer, not %d:%d (no CAP_SETPCAP to keep its rights while it takes the owner's ids)", b.where(ino), path, s.File.UID, s.File.GID)
	}
	if b.r.afterBind != nil {
		b.r.afterBind(path)
	}
	return nil
}

// bindFile binds socket fd to path, its file made at once with mode perm
// and owner uid:gid: the file is never touched by its path afterwards,
// where a user who can write the directory could have put a symlink or a
// hard link to another file in its place (a chmod or chown by path would
// then change that file, as root). The bind runs on a thread of its own,
// which dies after it:
//   - unshare(CLONE_FS), then umask 0 (the umask is shared by the whole
//     process otherwise), and the socket's own inode set to perm (fchmod
//     on the socket): bind creates the file with the socket inode's mode
//     less the umask;
//   - SECBIT_NO_SETUID_FIXUP, then setfsgid and setfsuid to the owner
//     (per thread): the file is created by the owner, with the
//     restorer's capabilities kept for the rest (a directory the owner
//     may not write, as the original had it made while privileged).
//
// owned is false if the ids could not be taken (no CAP_SETPCAP): the file
// is then the restorer's.
func bindFile(fd int, path string, perm, uid, gid uint32) (owned bool, err error) {
	type result struct {
		owned bool
		err   error
	}
	c := make(chan result, 1)
	// A thread of its own: its fs context and ids are changed, and it
	// ends with them.
	osthread.Go(func() {
		var r result
		r.owned, r.err = bindFileLocked(fd, path, perm, uid, gid)
		c <- r
	})
	r := <-c
	return r.owned, r.err
}

func bindFileLocked(fd int, path string, perm, uid, gid uint32) (owned bool, err error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return false, os.NewSyscallError("unshare(CLONE_FS)", err)
	}
	unix.Umask(0)
	if err := unix.Fchmod(fd, perm); err != nil {
		return false, os.NewSyscallError("fchmod on the socket", err)
	}
	if bits, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0); err == nil &&
		unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits)|secbitNoSetuidFixup, 0, 0, 0) == nil {
		// setfs[ug]id return the previous id: asking again with -1 tells
		// whether the change took.
		unix.Syscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
		unix.Syscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
		g, _, _ := unix.Syscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0)
		u, _, _ := unix.Syscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0)
		owned = uint32(g) == gid && uint32(u) == uid
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return false, err
	}
	return owned, nil
}

// bindTemp binds a socket whose file was gone at the dump, and whose path
// another file has taken since, to a temporary name without a file.
func (b *unixBuilder) bindTemp(ino uint64, s *core.Socket) error {
	dir, err := os.MkdirTemp("", "migrate-sock-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "s")
	if err := unix.Bind(int(b.files[ino].Fd()), &unix.SockaddrUnix{Name: p}); err != nil {
		return b.errorf(ino, "bind %s: %v", p, err)
	}
	b.r.warn("%s: unix socket %s: its file was gone at the dump and the path is taken now; it is bound to a temporary name", b.where(ino), s.Local)
	return nil
}

// clearStale removes a socket file nobody listens on any more (the
// original's, left behind when it was killed). A live socket at path, or a
// file of another kind, is an error.
func clearStale(path string, typ int) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is taken by a file that is not a socket", path)
	}
	probe, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return err
	}
	err = unix.Connect(probe, &unix.SockaddrUnix{Name: path})
	unix.Close(probe)
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove the stale socket file: %w", err)
		}
		return nil
	case errors.Is(err, unix.ENOENT):
		return nil
	case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EPROTOTYPE):
		return fmt.Errorf("%w: a live socket is bound to %s", unix.EADDRINUSE, path)
	default:
		return fmt.Errorf("probe the socket file: %w", err)
	}
}

func (b *unixBuilder) listen() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if s.State != core.SockListen {
			continue
		}
		if err := unix.Listen(int(b.files[ino].Fd()), s.Backlog); err != nil {
			return b.errorf(ino, "listen: %v", err)
		}
	}
	return nil
}

func (b *unixBuilder) queue(ino uint64) ([]byte, error) {
	name := b.socks[ino].Queue
	if name == "" {
		return nil, nil
	}
	data, err := b.r.readBlob(b.r.img, name)
	if err != nil {
		return nil, b.errorf(ino, "its queue: %v", err)
	}
	return data, nil
}

// fillUnconnected refills named datagram sockets that have no peer of the
// image from a socket of the agent, before they connect elsewhere.
func (b *unixBuilder) fillUnconnected() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if s.Queue == "" || s.Type != unix.SOCK_DGRAM || b.other[ino] != nil || s.Peer != 0 {
			continue
		}
		data, err := b.queue(ino)
		if err != nil {
			return err
		}
		if len(s.Name) == 0 {
			return b.errorf(ino, "datagrams queued on an unnamed socket with no peer")
		}
		tmp, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		sender := os.NewFile(uintptr(tmp), "sender")
		err = refill(sender, address(s), s.Type, data)
		sender.Close()
		if err != nil {
			return b.errorf(ino, "refill its queue: %v", err)
		}
		b.filled[ino] = true
	}
	return nil
}

func (b *unixBuilder) connect() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if s.State != core.SockConnected || s.Type != unix.SOCK_DGRAM || b.other[ino] != nil {
			continue
		}
		fd := int(b.files[ino].Fd())
		if s.Peer != 0 {
			p := b.socks[s.Peer]
			if err := unix.Connect(fd, address(p)); err != nil {
				return b.errorf(ino, "connect to %s: %v", unixText(p.Name), err)
			}
			continue
		}
		// A peer outside the process: connect to it again by name.
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: string(s.PeerName)}); err != nil {
			b.r.warn("%s: unix datagram socket: cannot connect to %s again (%v); it is left unconnected", b.where(ino), unixText(s.PeerName), err)
		}
	}
	return nil
}

// fillFromPeers refills queues from the socket at the other end.
func (b *unixBuilder) fillFromPeers() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if s.Queue == "" || b.filled[ino] {
			continue
		}
		data, err := b.queue(ino)
		if err != nil {
			return err
		}
		sender := b.other[ino]
		var to unix.Sockaddr
		if sender == nil {
			// A datagram socket connected to a peer of the image, which
			// sends to it by name.
			if s.Peer == 0 || b.files[s.Peer] == nil || len(s.Name) == 0 {
				return b.errorf(ino, "no socket can refill its queue")
			}
			sender, to = b.files[s.Peer], address(s)
		}
		if err := refill(sender, to, s.Type, data); err != nil {
			return b.errorf(ino, "refill its queue: %v", err)
		}
		b.filled[ino] = true
	}
	return nil
}

func (b *unixBuilder) finish() error {
	for _, ino := range b.order {
		s := b.socks[ino]
		if p := b.partners[ino]; p != nil {
			if s.Reset {
				// Bytes left unread in the peer make its close reset us.
				if _, err := unix.Write(int(b.files[ino].Fd()), []byte{0}); err != nil {
					b.r.warn("%s: unix socket: its pending ECONNRESET is lost: %v", b.where(ino), err)
				}
			}
			p.Close()
			delete(b.partners, ino)
		}
	}
	for _, ino := range b.order {
		s := b.socks[ino]
		how := -1
		switch s.Shutdown & (core.ShutRecv | core.ShutSend) {
		case core.ShutRecv:
			how = unix.SHUT_RD
		case core.ShutSend:
			how = unix.SHUT_WR
		case core.ShutRecv | core.ShutSend:
			how = unix.SHUT_RDWR
		}
		if how >= 0 && !(s.PeerGone && s.Type != unix.SOCK_DGRAM) {
			if err := unix.Shutdown(int(b.files[ino].Fd()), how); err != nil {
				b.r.warn("%s: unix socket: shutdown: %v", b.where(ino), err)
			}
		}
	}
	for _, p := range b.unlink {
		if err := os.Remove(p); err != nil {
			b.r.warn("unix socket file %s, gone at the dump, cannot be removed again: %v", p, err)
		}
	}
	for _, ino := range b.order {
		b.r.setOptions(b.where(ino), int(b.files[ino].Fd()), b.socks[ino].Options)
	}
	return nil
}

// refill sends a stored queue: stream bytes as they come, datagrams and
// seqpackets one message each. The sender's send buffer is raised for the
// time of it, since queued bytes count against the sender until read.
func refill(sender *os.File, to unix.Sockaddr, typ int, data []byte) error {
	fd := int(sender.Fd())
	var msgs [][]byte
	if typ == unix.SOCK_STREAM {
		msgs = [][]byte{data}
	} else {
		var err error
		if msgs, err = core.SplitDgrams(data); err != nil {
			return err
		}
	}
	need := 64 << 10
	for _, m := range msgs {
		need += 2*len(m) + 2048 // payload and the kernel's per-skb overhead
		if need > 1<<30 {
			need = 1 << 30
			break
		}
	}
	if old, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && old < need {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, need/2); err == nil {
			defer unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, old/2)
		}
	}
	const flags = unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL
	for i, m := range msgs {
		if typ != unix.SOCK_STREAM {
			if _, err := unix.SendmsgN(fd, m, nil, to, flags); err != nil {
				return fmt.Errorf("message %d of %d (%d bytes): %w", i+1, len(msgs), len(m), err)
			}
			continue
		}
		for off := 0; off < len(m); {
			n, err := raw.IgnoringEINTR2(func() (int, error) { return unix.SendmsgN(fd, m[off:], nil, to, flags) })
			if err != nil {
				return fmt.Errorf("%d of %d bytes queued: %w", off, len(m), err)
			}
			off += n
		}
	}
	return nil
}

// unixText is a unix address for people.
func unixText(name []byte) string {
	if len(name) > 0 && name[0] == 0 {
		return fmt.Sprintf("@%q", name[1:])
	}
	return string(name)
}
