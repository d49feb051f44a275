package source

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/source/sockets"
)

const kcmpFile = 0 // KCMP_FILE

// fdSet holds the agent's duplicates of the tracee's fds while the image is
// written.
type fdSet struct {
	pidfd int
	dups  map[int]*os.File // tracee fd -> duplicate in the agent
	// reads are the descriptions opened to read the contents of deleted
	// files and memfds (see readable).
	reads []*os.File
	// pending blobs: image fd index -> what to store
	blobs []pendingBlob
	// socks describes the sockets (the sockets package).
	socks *sockets.Process
	// What describeFDs found that the session keeps for the whole tree
	// (mergeFDs moves it there, in the tree's order): the pipe ends and
	// the TCP connections. Kept apart so that the processes of a tree
	// can be described at the same time.
	pipes []pipeRec
	conns sockets.Conns
	// prepared are the fds prepareFDs found, for describeFDs.
	prepared []fdPrep
}

// pipeRec is a pipe end of the process, for the session's pipes.
type pipeRec struct {
	ino uint64
	end pipeEnd
}

// fdPrep is what prepareFDs found of one fd: its link and fdinfo, the
// agent's duplicate, its stat and the open file description it shares
// with an fd described before (core.FD.Key), if any.
type fdPrep struct {
	link proc.FDLink
	info *proc.FDInfo
	nfd  int
	st   unix.Stat_t
	key  string
}

type pendingBlob struct {
	idx  int    // index in Process.FDs
	kind string // "file", "memfd", "pipe"
	what string // "file" (FileRef.Blob) or "data" (FD.Data)
	src  func() (io.Reader, error)
}

func (s *fdSet) close() {
	if s.socks != nil {
		s.socks.Close()
	}
	s.conns.Close()
	for _, f := range s.dups {
		f.Close()
	}
	for _, f := range s.reads {
		f.Close()
	}
	if s.pidfd >= 0 {
		unix.Close(s.pidfd)
	}
}

// collectFDs describes every open fd. An fd of a kind migrate cannot
// restore fails the dump here, before anything was injected.
//
// Preconditions: the process is frozen.
func (d *dumper) collectFDs(ctx context.Context) (*fdSet, error) {
	set, err := d.prepareFDs(ctx)
	if err != nil {
		return nil, err
	}
	err = d.describeFDs(ctx, set)
	d.mergeFDs(set)
	if err != nil {
		set.close()
		return nil, err
	}
	return set, nil
}

// prepareFDs is collectFDs's first part, which finds what the fds share
// with those described before (in this process or another of the tree:
// d.fds), and so goes one process after the other in the tree's order:
// the agent's duplicate of each fd, its stat and the description it
// shares, if any. describeFDs does the rest, which processes may do at
// the same time.
func (d *dumper) prepareFDs(ctx context.Context) (*fdSet, error) {
	set := &fdSet{pidfd: -1, dups: map[int]*os.File{}}
	set.socks = &sockets.Process{PID: d.pid, Probe: d.probe, Tree: d.opts.Tree, Log: d.log,
		Store: d.copyBlob, Dumped: d.dumpedSockets, Conns: &set.conns, Defaults: &d.session.sockDefaults}
	pre := d.fdsRead
	d.fdsRead = nil
	var links []proc.FDLink
	var err error
	if pre != nil {
		links = pre.links
	} else if links, err = proc.ReadFDs(d.pid); err != nil {
		return nil, fmt.Errorf("process %d: %w", d.pid, err)
	}
	set.pidfd, err = unix.PidfdOpen(d.pid, 0)
	if err != nil {
		return nil, fmt.Errorf("process %d: pidfd_open: %w", d.pid, err)
	}
	ok := false
	defer func() {
		if !ok {
			set.close()
		}
	}()
	if err := d.refuseFDTable(); err != nil {
		return nil, err
	}
	for i, l := range links {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var info *proc.FDInfo
		if pre != nil {
			info = pre.infos[i]
		} else {
			info, err = proc.ReadFDInfo(d.pid, l.FD)
		}
		if err != nil {
			if d.probe && errors.Is(err, fs.ErrNotExist) {
				continue // closed since the listing: the process runs
			}
			return nil, fmt.Errorf("process %d: fd %d: %w", d.pid, l.FD, err)
		}
		nfd, err := unix.PidfdGetfd(set.pidfd, l.FD, 0)
		if err != nil {
			if d.probe && errors.Is(err, unix.EBADF) {
				continue
			}
			return nil, fmt.Errorf("process %d: pidfd_getfd of fd %d: %w", d.pid, l.FD, err)
		}
		set.dups[l.FD] = os.NewFile(uintptr(nfd), l.Target)
		fp := fdPrep{link: l, info: info, nfd: nfd}
		if err := unix.Fstat(nfd, &fp.st); err != nil {
			return nil, fmt.Errorf("process %d: fd %d: %w", d.pid, l.FD, err)
		}
		// fds sharing one open file description, in this process or another
		// of the tree, stay shared: the first one names the description.
		for _, prev := range d.fds {
			if prev.dev != fp.st.Dev || prev.ino != fp.st.Ino {
				continue
			}
			if r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(prev.pid), uintptr(d.pid), kcmpFile, uintptr(prev.fd), uintptr(l.FD), 0); e == 0 && r == 0 {
				fp.key = prev.key
				break
			}
		}
		rec := fdRecord{pid: d.pid, fd: l.FD, dev: fp.st.Dev, ino: fp.st.Ino, key: fp.key}
		if rec.key == "" {
			rec.key = descKey(d.pid, l.FD)
		}
		d.fds = append(d.fds, rec)
		set.prepared = append(set.prepared, fp)
	}
	ok = true
	return set, nil
}

// mergeFDs moves what describeFDs found of set that the session keeps
// for the whole tree into it: called for the processes in the tree's
// order, whatever describeFDs returned (the connections noted are the
// session's to close).
func (d *dumper) mergeFDs(set *fdSet) {
	for _, r := range set.pipes {
		d.pipes[r.ino] = append(d.pipes[r.ino], r.end)
	}
	set.pipes = nil
	d.tcp.Take(&set.conns)
}

// describeFDs is collectFDs's second part (see prepareFDs): it describes
// each fd prepareFDs found, and reads the sockets' options. It touches
// nothing of the session but through its locks (the sockets' defaults,
// the blobs): the processes of a tree may be described at the same time.
func (d *dumper) describeFDs(ctx context.Context, set *fdSet) error {
	p := d.proc
	for _, fp := range set.prepared {
		if err := ctx.Err(); err != nil {
			return err
		}
		l, info, nfd, st := fp.link, fp.info, fp.nfd, &fp.st
		dup := set.dups[l.FD]
		fd := core.FD{
			FD:      l.FD,
			Flags:   info.Flags &^ unix.O_CLOEXEC,
			Cloexec: info.Flags&unix.O_CLOEXEC != 0,
			Pos:     info.Pos,
			Key:     fp.key,
		}
		var err error
		if fd.Owner, fd.Signal, err = d.fdOwner(nfd); err != nil {
			return &UnsupportedFDError{PID: d.pid, FD: l.FD, Kind: l.Target, Reason: err.Error()}
		}
		idx := len(p.FDs)
		target := l.Target
		unsupported := func(reason string) error {
			return &UnsupportedFDError{PID: d.pid, FD: l.FD, Kind: target, Reason: reason}
		}
		if d.opts.external(target) {
			// Supplied at the restore (--inherit-fd): only its number
			// and flags are kept.
			if err := d.externalFD(&fd, nfd, target, info.Locks()); err != nil {
				return err
			}
			p.FDs = append(p.FDs, fd)
			continue
		}
		// A lock that did not come back would let in whoever it kept out
		// (a database's lock lost is data corruption): each is carried,
		// or the dump refused.
		if locks := info.Locks(); len(locks) > 0 {
			if d.opts.live {
				return unsupported(fmt.Sprintf("it holds a file lock (%s): the original holds it until it ends, so live migration does not carry file locks yet (migrate dump and restore do)", strings.Join(locks, "; ")))
			}
			if fd.Locks, err = fileLocks(info); err != nil {
				return unsupported(err.Error())
			}
		}
		ref := func() *core.FileRef {
			r := &core.FileRef{Path: target, Size: st.Size, Mtime: st.Mtim.Nano(), Mode: st.Mode, UID: st.Uid, GID: st.Gid, Dev: st.Dev, Ino: st.Ino}
			if s, ok := strings.CutSuffix(target, " (deleted)"); ok && st.Nlink == 0 {
				r.Path, r.Deleted = s, true
			}
			return r
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if name, ok := strings.CutPrefix(target, "/memfd:"); ok {
				fd.Kind = core.FDMemfd
				fd.MemfdName = strings.TrimSuffix(name, " (deleted)")
				fd.File = ref()
				seals, err := unix.FcntlInt(uintptr(nfd), unix.F_GET_SEALS, 0)
				if err == nil {
					fd.Seals = seals
				}
				if fd.Key == "" {
					src, seek, err := set.readable(dup, fd.Flags)
					if err != nil {
						return fmt.Errorf("process %d: fd %d: %w", d.pid, l.FD, err)
					}
					set.blobs = append(set.blobs, pendingBlob{idx: idx, kind: "memfd", what: "file", src: sparseFile(src, fd.File, seek)})
				}
				break
			}
			if isMqueue(nfd) {
				return unsupported("a POSIX message queue (mq_open): migrate does not carry them")
			}
			if !strings.HasPrefix(target, "/") {
				return unsupported("a regular file without a path")
			}
			fd.Kind = core.FDFile
			fd.File = ref()
			if fd.File.Deleted && fd.Key == "" {
				src, seek, err := set.readable(dup, fd.Flags)
				if err != nil {
					return fmt.Errorf("process %d: fd %d: %w", d.pid, l.FD, err)
				}
				set.blobs = append(set.blobs, pendingBlob{idx: idx, kind: "file", what: "file", src: sparseFile(src, fd.File, seek)})
			}
		case unix.S_IFDIR:
			fd.Kind = core.FDDir
			fd.File = ref()
			if fd.File.Deleted {
				return unsupported("a deleted directory")
			}
		case unix.S_IFCHR:
			if !strings.HasPrefix(target, "/dev/") {
				return unsupported("a character device outside /dev")
			}
			if reason := ptyReason(st.Rdev); reason != "" {
				return unsupported(reason)
			}
			fd.Kind = core.FDChar
			fd.File = ref()
		case unix.S_IFIFO:
			if strings.HasPrefix(target, "pipe:[") {
				fd.Kind = core.FDPipe
				fd.Pipe = st.Ino
				set.pipes = append(set.pipes, pipeRec{st.Ino, pipeEnd{d, idx, l.FD}})
			} else {
				fd.Kind = core.FDFIFO
				fd.File = ref()
				if fd.File.Deleted {
					return unsupported("a deleted FIFO")
				}
				set.pipes = append(set.pipes, pipeRec{st.Ino, pipeEnd{d, idx, l.FD}})
			}
			sz, err := unix.FcntlInt(uintptr(nfd), unix.F_GETPIPE_SZ, 0)
			if err != nil {
				return fmt.Errorf("process %d: fd %d: F_GETPIPE_SZ: %w", d.pid, l.FD, err)
			}
			fd.PipeSize = sz
		default:
			switch {
			case target == "anon_inode:[eventfd]":
				if !info.HasEventfd {
					return unsupported("eventfd without a count in fdinfo")
				}
				fd.Kind = core.FDEventfd
				fd.Count = info.EventfdCount
				fd.Semaphore = info.EventfdSemaphore
			case strings.HasPrefix(target, "socket:"):
				fd.Kind = core.FDSocket
				if err := set.socks.Describe(&fd, dup); err != nil {
					return d.socketError(err)
				}
			case target == "anon_inode:inotify":
				fd.Kind = core.FDInotify
				if fd.Inotify, err = inotifyWatches(info); err != nil {
					return unsupported(err.Error())
				}
			case target == "anon_inode:[eventpoll]":
				fd.Kind = core.FDEpoll
				targets, err := info.EpollTargets()
				if err != nil {
					return fmt.Errorf("process %d: fd %d: %w", d.pid, l.FD, err)
				}
				for _, t := range targets {
					fd.Epoll = append(fd.Epoll, core.EpollTarget{FD: t.FD, Events: t.Events, Data: t.Data})
				}
			case target == "anon_inode:[timerfd]":
				tf, err := info.Timerfd()
				if err != nil {
					return unsupported("timerfd without its state in fdinfo")
				}
				ns := func(t proc.Timespec) int64 { return int64(t.Sec)*1e9 + int64(t.Nsec) }
				if tf.Ticks > 0 && ns(tf.Interval) > 0 && ns(tf.Value) == 0 && !d.probe {
					if tf, err = settleTimerfd(d.pid, l.FD, nfd, tf); err != nil {
						return unsupported(err.Error())
					}
				}
				fd.Kind = core.FDTimerfd
				fd.Timerfd = &core.Timerfd{Clock: tf.ClockID, Flags: tf.SettimeFlags, Ticks: tf.Ticks,
					ValueNS: ns(tf.Value), IntervalNS: ns(tf.Interval)}
			case target == "anon_inode:[pidfd]":
				// Of a process of the dump (checked once all are read:
				// checkPidfds), opened again on the restored one.
				pid, err := strconv.Atoi(strings.TrimSpace(info.Extra["Pid"]))
				if err != nil || pid <= 0 {
					return unsupported(fmt.Sprintf("a pidfd of a process that has ended or is outside migrate's PID namespace (Pid: %q)", info.Extra["Pid"]))
				}
				fd.Kind = core.FDPidfd
				fd.PidfdPID = pid
			case target == "anon_inode:[signalfd]":
				mask, err := info.SignalfdMask()
				if err != nil {
					return unsupported("signalfd without its mask in fdinfo")
				}
				fd.Kind = core.FDSignalfd
				fd.SigMask = mask
			default:
				return unsupported("this kind of file is not supported yet")
			}
		}
		if len(fd.Locks) > 0 && fd.Kind != core.FDFile && fd.Kind != core.FDDir {
			return unsupported(fmt.Sprintf("it holds a file lock on a %s, which migrate does not restore", fd.Kind))
		}
		p.FDs = append(p.FDs, fd)
	}

	set.socks.Close() // its sock_diag socket: the sockets are described
	if err := set.socks.ReadOptions(); err != nil {
		return d.socketError(err)
	}
	set.prepared = nil
	return nil
}

// fdsRead are a frozen process's fds (proc.ReadFDs) and the fdinfo of
// each, in the same order.
type fdsRead struct {
	links []proc.FDLink
	infos []*proc.FDInfo
}

// prefetchFDs reads what collectFDs needs of /proc for the process's fds
// into d.fdsRead, so that the frozen tree's processes read it side by
// side on their tracers while collectFDs, which finds what they share,
// goes through them one after the other. On an error it reads nothing:
// collectFDs reads again and says what failed.
//
// Preconditions: the process is frozen.
func (d *dumper) prefetchFDs() {
	d.fdsRead = nil
	links, err := proc.ReadFDs(d.pid)
	if err != nil {
		return
	}
	infos := make([]*proc.FDInfo, len(links))
	for i, l := range links {
		if infos[i], err = proc.ReadFDInfo(d.pid, l.FD); err != nil {
			return
		}
	}
	d.fdsRead = &fdsRead{links: links, infos: infos}
}

// socketInodes are the inodes of the sockets among links.
func socketInodes(links []proc.FDLink, into map[uint64]bool) {
	for _, l := range links {
		if v, ok := strings.CutPrefix(l.Target, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(v, "]"), 10, 64); err == nil {
				into[ino] = true
			}
		}
	}
}

// socketError turns the sockets package's refusal of a socket into an
// *UnsupportedFDError.
func (d *dumper) socketError(err error) error {
	var ue *sockets.UnsupportedError
	if errors.As(err, &ue) {
		reason := ue.Reason
		if ue.Outside {
			reason += "; or name it external (" + externalHint(ue.Kind) + ")"
		}
		return &UnsupportedFDError{PID: ue.PID, FD: ue.FD, Kind: ue.Kind, Reason: reason}
	}
	return err
}

// dumpedSockets returns the inodes of the sockets held by the processes
// of the dump: the root, and with DumpOptions.Tree its descendants. They
// are read once for the session's fds (the frozen read, a probe): each
// unix socket's peer is looked up in them, and the whole tree's fds were
// read again for each (a third of the fds' time for nginx's three).
//
// Preconditions: every process of the dump is frozen (a probe takes
// them as they are).
func (d *dumper) dumpedSockets() (map[uint64]bool, error) {
	if d.session.dumpedSocks != nil {
		return d.session.dumpedSocks, nil
	}
	out, err := d.readDumpedSockets()
	if err == nil {
		d.session.dumpedSocks = out
	}
	return out, err
}

func (d *dumper) readDumpedSockets() (map[uint64]bool, error) {
	root := d.opts.PID
	if root == 0 {
		root = d.pid
	}
	pids := []int{root}
	if d.opts.Tree {
		for i := 0; i < len(pids); i++ {
			kids, err := childrenOf(pids[i])
			if err != nil {
				return nil, fmt.Errorf("children of process %d: %w", pids[i], err)
			}
			pids = append(pids, kids...)
		}
	}
	out := map[uint64]bool{}
	for _, pid := range pids {
		socks, err := sockets.Inodes(pid)
		if err != nil && pid == root {
			return nil, err
		}
		// A zombie of the tree has no fds.
		for ino := range socks {
			out[ino] = true
		}
	}
	return out, nil
}

// fdRecord is an fd seen in the tree, for finding shared descriptions.
type fdRecord struct {
	pid, fd  int
	dev, ino uint64
	key      string // the description's key: "PID:FD" of its first fd
}

func descKey(pid, fd int) string { return strconv.Itoa(pid) + ":" + strconv.Itoa(fd) }

// pipeEnd is an fd of a pipe or FIFO in some process of the tree.
type pipeEnd struct {
	d       *dumper
	idx, fd int // index in the process's FDs, fd number
}

// resolvePipes checks that each pipe has both ends inside the tree (the
// other end of a pipe held by a process outside cannot be reconnected from
// an image) and stores its buffered bytes once, with its first read end.
//
// Preconditions: every process of the tree is frozen and its fds collected.
func (ss *session) resolvePipes() error {
	inos := make([]uint64, 0, len(ss.pipes))
	for ino := range ss.pipes {
		inos = append(inos, ino)
	}
	sort.Slice(inos, func(i, j int) bool { return inos[i] < inos[j] })
	for _, ino := range inos {
		ends := ss.pipes[ino]
		first := ends[0]
		if first.d.proc.FDs[first.idx].Kind == core.FDFIFO {
			if ss.probe {
				continue
			}
			if err := first.d.pipeData(first.d.fdset, first.idx, first.fd, true, packetMode(ends)); err != nil {
				return err
			}
			continue
		}
		var r, w *pipeEnd
		for i := range ends {
			switch ends[i].d.proc.FDs[ends[i].idx].Flags & unix.O_ACCMODE {
			case unix.O_RDONLY:
				if r == nil {
					r = &ends[i]
				}
			case unix.O_WRONLY:
				if w == nil {
					w = &ends[i]
				}
			}
		}
		if r == nil || w == nil {
			side := "write"
			if r == nil {
				side = "read"
			}
			id := fmt.Sprintf("pipe:[%d]", ino)
			return &UnsupportedFDError{PID: first.d.pid, FD: first.fd, Kind: id,
				Reason: "its " + side + " end is held by a process outside the dump; start the process with stdio on files or /dev/null, " +
					"or name it external (" + externalHint(id) + ")"}
		}
		if ss.probe {
			continue
		}
		if err := r.d.pipeData(r.d.fdset, r.idx, r.fd, false, packetMode(ends)); err != nil {
			return err
		}
	}
	return nil
}

// pipeData copies the bytes buffered in a pipe without consuming them: tee(2)
// duplicates them into a pipe of our own, which we then drain. The copy
// keeps the packets of a packet-mode pipe (tee copies buffers with their
// flags) and a read stops at the end of a packet: each read of the copy
// returns what one read of the pipe would, ending with at most one
// packet. direct says the pipe writes packets (an end has O_DIRECT).
func (d *dumper) pipeData(set *fdSet, idx, fd int, fifo, direct bool) error {
	src := set.dups[fd]
	size := d.proc.FDs[idx].PipeSize
	copyOf := func() (int, int, int64, error) {
		var pp [2]int
		if err := unix.Pipe2(pp[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			return -1, -1, 0, err
		}
		if _, err := unix.FcntlInt(uintptr(pp[1]), unix.F_SETPIPE_SZ, size); err != nil {
			unix.Close(pp[0])
			unix.Close(pp[1])
			return -1, -1, 0, fmt.Errorf("process %d: fd %d: cannot make a %d-byte pipe to copy its buffer: %w", d.pid, fd, size, err)
		}
		n, err := unix.Tee(int(src.Fd()), pp[1], size, unix.SPLICE_F_NONBLOCK)
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			unix.Close(pp[0])
			unix.Close(pp[1])
			if fifo && errors.Is(err, unix.EINVAL) {
				return -1, -1, 0, nil
			}
			return -1, -1, 0, fmt.Errorf("process %d: fd %d: tee: %w", d.pid, fd, err)
		}
		return pp[0], pp[1], n, nil
	}
	r, w, n, err := copyOf()
	if err != nil || r < 0 {
		return err
	}
	defer unix.Close(r)
	defer unix.Close(w)
	if n <= 0 {
		return nil
	}
	buf := make([]byte, n)
	var records []int // what each read returned
	for got := int64(0); got < n; {
		m, err := unix.Read(r, buf[got:])
		if err != nil || m <= 0 {
			return fmt.Errorf("process %d: fd %d: read copied pipe buffer: %v", d.pid, fd, err)
		}
		got += int64(m)
		records = append(records, m)
	}
	var packets []int
	if direct || len(records) > 1 {
		// Packets are queued. Each read ended with one; it is all of
		// the read if a 1-byte read of a second copy takes it whole (a
		// read drops the rest of a packet, but takes one byte of stream
		// data).
		r2, w2, n2, err := copyOf()
		if err != nil || r2 < 0 {
			return err
		}
		defer unix.Close(r2)
		defer unix.Close(w2)
		left := n2
		var one [1]byte
		for _, rec := range records {
			if _, err := unix.Read(r2, one[:]); err != nil {
				return fmt.Errorf("process %d: fd %d: read copied pipe buffer: %w", d.pid, fd, err)
			}
			now, err := unix.IoctlGetInt(r2, unix.TIOCINQ)
			if err != nil {
				return fmt.Errorf("process %d: fd %d: FIONREAD: %w", d.pid, fd, err)
			}
			if left-int64(now) != int64(rec) {
				return &UnsupportedFDError{PID: d.pid, FD: fd, Kind: fmt.Sprintf("pipe:[%d]", d.proc.FDs[idx].Pipe),
					Reason: "it holds packets (O_DIRECT) mixed with stream data, whose boundaries migrate cannot keep"}
			}
			left = int64(now)
		}
		if n2 != n {
			return fmt.Errorf("process %d: fd %d: pipe holds %d bytes, then %d: it is not frozen", d.pid, fd, n, n2)
		}
		packets = records
	}
	set.blobs = append(set.blobs, pendingBlob{idx: idx, kind: "pipe", what: "data",
		src: func() (io.Reader, error) { return strings.NewReader(string(buf)), nil }})
	d.proc.FDs[idx].Packets = packets
	return nil
}

// writeBlobs stores file contents and pipe buffers under files/, and the
// contents of deleted files that are mapped but not open.
func (s *fdSet) writeBlobs(d *dumper) error {
	open := map[[2]uint64]bool{}
	for _, fd := range d.proc.FDs {
		if fd.File != nil {
			open[[2]uint64{fd.File.Dev, fd.File.Ino}] = true
		}
	}
	stored := map[[2]uint64]string{}
	for i := range d.proc.VMAs {
		v := &d.proc.VMAs[i]
		if v.File == nil || !v.File.Deleted || open[[2]uint64{v.File.Dev, v.File.Ino}] {
			continue
		}
		key := [2]uint64{v.File.Dev, v.File.Ino}
		if name, ok := stored[key]; ok {
			v.File.Blob = name
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", d.pid, v.Start, v.End))
		if err != nil {
			return fmt.Errorf("process %d: deleted file mapped at %#x: %w", d.pid, v.Start, err)
		}
		r, err := sparseFile(f, v.File, true)()
		if err != nil {
			f.Close()
			return fmt.Errorf("process %d: deleted file mapped at %#x: %w", d.pid, v.Start, err)
		}
		name, err := d.copyBlob("mapped", r)
		f.Close()
		if err != nil {
			return err
		}
		v.File.Blob = name
		stored[key] = name
	}
	for _, b := range s.blobs {
		r, err := b.src()
		if err != nil {
			return err
		}
		name, err := d.copyBlob(b.kind, r)
		if err != nil {
			return err
		}
		fd := &d.proc.FDs[b.idx]
		if b.what == "data" {
			fd.Data = name
		} else {
			fd.File.Blob = name
		}
	}
	return nil
}

// tfdIocSetTicks is TFD_IOC_SET_TICKS, _IOW('T', 0, __u64).
const tfdIocSetTicks = 0x40085400

// settleTimerfd brings the true state of a periodic timerfd that expired
// and was not read: fdinfo then shows one tick and no time left, since the
// kernel counts the intervals that passed since and re-arms the timer only
// on a read. So read it (through our duplicate: the count, and the timer
// moves on to its next expiry), put the count back with TFD_IOC_SET_TICKS,
// and read fdinfo again. The process sees the same count, and a timer
// armed as it would be.
//
// Preconditions: the process is frozen.
func settleTimerfd(pid, fd, dup int, tf *proc.Timerfd) (*proc.Timerfd, error) {
	// First make sure the count can be put back: set it to what it is.
	ticks := tf.Ticks
	if _, err := raw.Ioctl(dup, tfdIocSetTicks, &ticks); err != nil {
		// No TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE): keep the
		// timer as fdinfo shows it.
		return tf, nil
	}
	var b [8]byte
	n, err := unix.Read(dup, b[:])
	if err != nil || n != 8 {
		return nil, fmt.Errorf("timerfd: read its expirations: %v", err)
	}
	ticks = binary.LittleEndian.Uint64(b[:])
	if _, err := raw.Ioctl(dup, tfdIocSetTicks, &ticks); err != nil {
		return nil, fmt.Errorf("timerfd: put back %d expirations: %w", ticks, err)
	}
	info, err := proc.ReadFDInfo(pid, fd)
	if err != nil {
		return nil, err
	}
	return info.Timerfd()
}

// fileLocks converts the locks held through an fd for the image: POSIX,
// flock and OFD locks; a lease, a delegation or a mandatory lock is an
// error naming it.
func fileLocks(info *proc.FDInfo) ([]core.FileLock, error) {
	locks, err := info.FileLocks()
	if err != nil {
		return nil, err
	}
	out := make([]core.FileLock, 0, len(locks))
	for _, l := range locks {
		var kind string
		switch l.Kind {
		case "POSIX":
			kind = core.LockPOSIX
		case "FLOCK":
			kind = core.LockFlock
		case "OFDLCK":
			kind = core.LockOFD
		case "LEASE":
			return nil, fmt.Errorf("it holds a lease (F_SETLEASE, %s), which migrate does not restore", strings.ToLower(l.Access))
		default:
			return nil, fmt.Errorf("it holds a %s lock, which migrate does not restore", l.Kind)
		}
		if l.Mode != "ADVISORY" {
			return nil, fmt.Errorf("it holds a %s %s lock, which migrate does not restore", strings.ToLower(l.Mode), l.Kind)
		}
		if l.Access != "READ" && l.Access != "WRITE" {
			return nil, fmt.Errorf("it holds a %s lock for %s, which migrate does not know", l.Kind, l.Access)
		}
		fl := core.FileLock{Kind: kind, Write: l.Access == "WRITE"}
		if kind != core.LockFlock {
			if l.Start > math.MaxInt64 || (!l.ToEOF && l.End >= math.MaxInt64) {
				return nil, fmt.Errorf("it holds a %s lock on bytes %d-%d, beyond what fcntl takes", l.Kind, l.Start, l.End)
			}
			fl.Start = int64(l.Start)
			if !l.ToEOF {
				fl.Len = int64(l.End-l.Start) + 1
			}
		}
		out = append(out, fl)
	}
	return out, nil
}

// mqueueMagic is the file system type of POSIX message queues
// (MQUEUE_MAGIC).
const mqueueMagic = 0x19800202

// isMqueue says whether fd is a POSIX message queue: a regular file of
// the mqueue file system, which reopening by its name would not give.
func isMqueue(fd int) bool {
	var sfs unix.Statfs_t
	return unix.Fstatfs(fd, &sfs) == nil && sfs.Type == mqueueMagic
}
