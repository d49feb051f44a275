package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/par"
	"github.com/procmig/migrate/internal/raw"
)

// prepareDeleted recreates, in the agent, every deleted file and memfd the
// processes of img had open or mapped, once per original inode. It is
// called again with a live migration's final image, whose fds (and the
// blobs of their contents) the first layout did not have: what was
// recreated then stays.
func (r *session) prepareDeleted(ctx context.Context, img *core.Image) error {
	if r.deletedFiles == nil {
		r.deletedFiles = map[fileKey]*os.File{}
	}
	var refs []*core.FileRef
	procs := []*core.Process{&img.Process}
	for i := range img.Tree {
		procs = append(procs, &img.Tree[i])
	}
	for _, p := range procs {
		for i := range p.FDs {
			if f := p.FDs[i].File; f != nil && (f.Deleted || p.FDs[i].Kind == core.FDMemfd) && f.Blob != "" {
				refs = append(refs, f)
			}
		}
		for i := range p.VMAs {
			if f := p.VMAs[i].File; f != nil && f.Deleted && f.Blob != "" {
				refs = append(refs, f)
			}
		}
	}
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := fileKey{ref.Dev, ref.Ino, false}
		if r.deletedFiles[key] != nil {
			continue
		}
		f, err := r.recreate(ctx, img, ref)
		if err != nil {
			return fmt.Errorf("recreate %s: %w", ref.Path, err)
		}
		r.deletedFiles[key] = r.keep(f)
	}
	return nil
}

// recreate makes an unlinked file (a memfd for memfds, an O_TMPFILE in the
// original directory otherwise) holding the stored contents, with the
// original's owner and mode (see setOwnerMode).
func (r *session) recreate(ctx context.Context, img *core.Image, ref *core.FileRef) (*os.File, error) {
	src, err := r.openBlob(img, ref.Blob)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	var f *os.File
	if name, ok := strings.CutPrefix(ref.Path, "/memfd:"); ok {
		fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			return nil, err
		}
		f = os.NewFile(uintptr(fd), ref.Path)
		// Its mode as it was: a memfd made with MFD_NOEXEC_SEAL (or
		// chmodded) is not executable, and its F_SEAL_EXEC, added
		// later, keeps it so.
		if err := unix.Fchmod(fd, ref.Mode&0o7777); err != nil {
			f.Close()
			return nil, fmt.Errorf("memfd %s: mode %#o: %w", name, ref.Mode&0o7777, err)
		}
	} else {
		// Created 0600: the mode comes once the owner is right.
		dir := filepath.Dir(ref.Path)
		fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			// The directory is gone or does not take O_TMPFILE.
			if fd, err = unix.Open(os.TempDir(), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err != nil {
				return nil, err
			}
			r.warn("deleted file %s recreated in %s", ref.Path, os.TempDir())
		}
		f = os.NewFile(uintptr(fd), ref.Path)
	}
	if err := fillFile(f, ctxReader{ctx, src}, ref); err != nil {
		f.Close()
		return nil, err
	}
	if err := r.setOwnerMode(f, ref); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// fillFile writes the stored contents src of the file ref into f: the
// whole file, or for a sparse one, each data extent at its offset, the
// rest left holes up to its size.
func fillFile(f *os.File, src io.Reader, ref *core.FileRef) error {
	if len(ref.Extents) == 0 {
		_, err := io.Copy(f, src)
		return err
	}
	for _, e := range ref.Extents {
		if _, err := io.CopyN(io.NewOffsetWriter(f, e.Off), src, e.Len); err != nil {
			return fmt.Errorf("extent %d+%d: %w", e.Off, e.Len, err)
		}
	}
	// Read to the end: the blob is checked there, and must hold no more.
	if n, err := io.Copy(io.Discard, src); err != nil || n != 0 {
		return &core.ImageError{File: ref.Blob, Reason: fmt.Sprintf("%d bytes more than its extents", n), Err: err}
	}
	return f.Truncate(ref.Size)
}

// setIDBits are the mode bits that give privilege on exec.
const setIDBits = unix.S_ISUID | unix.S_ISGID

// setOwnerMode gives a file the restore created the owner and mode ref
// recorded. The owner first: the file is the restorer's (root's) until
// then, and must never carry set-id bits while it is. If the owner cannot
// be set (an ID this user namespace does not map), the file keeps the
// restorer's and gets the mode without its set-id bits.
func (r *session) setOwnerMode(f *os.File, ref *core.FileRef) error {
	mode := ref.Mode & 0o7777
	if err := unix.Fchown(int(f.Fd()), int(ref.UID), int(ref.GID)); err != nil {
		if mode&setIDBits != 0 {
			mode &^= setIDBits
			r.warn("%s recreated without its set-user/group-ID bits: cannot give it its owner %d:%d: %v", ref.Path, ref.UID, ref.GID, err)
		} else {
			r.warn("%s recreated owned by the restorer: cannot give it its owner %d:%d: %v", ref.Path, ref.UID, ref.GID, err)
		}
	}
	if err := unix.Fchmod(int(f.Fd()), mode); err != nil {
		return &os.PathError{Op: "fchmod", Path: ref.Path, Err: err}
	}
	return nil
}

// unchangedFile checks that the file st describes, found for fd, is the
// file fd had open as it was at the dump: a process whose memory knows a
// file's length, or its contents (a database's pages, a position in its
// input), must not come back to another. Same size and same modification
// time, to the nanosecond, or the restore is refused, naming the file. A
// file open with O_APPEND is exempt: the process writes at its end,
// whatever it is (a log that other processes, or the original left
// running by dump --leave-running, wrote to since).
func unchangedFile(st *unix.Stat_t, fd *core.FD) error {
	if fd.Kind != core.FDFile || fd.File == nil || fd.File.Deleted || fd.Flags&unix.O_APPEND != 0 {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &core.ImageError{File: fd.File.Path, Reason: fmt.Sprintf("fd %d: a regular file at the dump, a %s now", fd.FD, fileType(st.Mode)), Err: core.ErrNotRegular}
	}
	if st.Size == fd.File.Size && st.Mtim.Nano() == fd.File.Mtime {
		return nil
	}
	return &core.ImageError{File: fd.File.Path, Reason: fmt.Sprintf("fd %d: the file changed since the dump (size %d, was %d; mtime %s, was %s): "+
		"the process would carry on with a file other than the one it knew (shared storage, or the file as it was, is needed)",
		fd.FD, st.Size, fd.File.Size, time.Unix(0, st.Mtim.Nano()).UTC().Format(time.RFC3339Nano), time.Unix(0, fd.File.Mtime).UTC().Format(time.RFC3339Nano))}
}

// openFD opens, in the agent, the file description fd had.
func (r *restorer) openFD(ctx context.Context, fd *core.FD, pipes map[uint64][2]*os.File) (*os.File, error) {
	// File status flags that open(2) takes; the rest are set with F_SETFL.
	flags := fd.Flags &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_NOCTTY | unix.O_CLOEXEC)
	switch fd.Kind {
	case core.FDFile, core.FDDir, core.FDChar:
		var f *os.File
		var err error
		if fd.File.Deleted {
			src := r.deletedFiles[fileKey{fd.File.Dev, fd.File.Ino, false}]
			if src == nil {
				return nil, fmt.Errorf("deleted file %s has no copy in the image", fd.File.Path)
			}
			// Reopen for the original access mode and flags.
			f, err = os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", src.Fd()), flags|unix.O_CLOEXEC, 0)
		} else {
			f, err = r.paths.open(fd.File.Path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK)
		}
		if err != nil {
			return nil, err
		}
		if fd.Kind == core.FDFile && !fd.File.Deleted {
			// validate compared the file by its path; this is the file
			// opened, which may have changed since.
			var st unix.Stat_t
			err := unix.Fstat(int(f.Fd()), &st)
			if err == nil {
				err = unchangedFile(&st, fd)
			}
			if err != nil {
				f.Close()
				return nil, err
			}
		}
		if err := setFlags(f, fd.Flags); err != nil {
			f.Close()
			return nil, err
		}
		if fd.Kind != core.FDChar || fd.Pos != 0 {
			if _, err := f.Seek(fd.Pos, io.SeekStart); err != nil && fd.Kind != core.FDChar {
				f.Close()
				return nil, fmt.Errorf("seek to %d: %w", fd.Pos, err)
			}
		}
		return f, nil
	case core.FDMemfd:
		src := r.deletedFiles[fileKey{fd.File.Dev, fd.File.Ino, false}]
		if src == nil {
			return nil, fmt.Errorf("memfd %s has no copy in the image", fd.MemfdName)
		}
		f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", src.Fd()), flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if _, err := f.Seek(fd.Pos, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case core.FDPipe:
		ends, ok := pipes[fd.Pipe]
		if !ok {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				return nil, err
			}
			ends = [2]*os.File{r.keep(os.NewFile(uintptr(p[0]), "pipe-r")), r.keep(os.NewFile(uintptr(p[1]), "pipe-w"))}
			pipes[fd.Pipe] = ends
			if fd.PipeSize > 0 {
				if _, err := unix.FcntlInt(ends[1].Fd(), unix.F_SETPIPE_SZ, fd.PipeSize); err != nil {
					r.warn("pipe:[%d]: cannot set its size to %d: %v", fd.Pipe, fd.PipeSize, err)
				}
			}
		}
		end := ends[0]
		if fd.Flags&unix.O_ACCMODE == unix.O_WRONLY {
			end = ends[1]
		}
		if fd.Data != "" {
			if err := r.fillPipe(ends[1], fd.Data, fd.Packets); err != nil {
				return nil, err
			}
		}
		// O_NONBLOCK and friends belong to the end, set on the shared
		// description: open a new description of the same end? No: a pipe
		// end's flags live in its one description, so set them here.
		if err := setFlags(end, fd.Flags); err != nil {
			return nil, err
		}
		return dupFile(end)
	case core.FDFIFO:
		// A holder open for both directions keeps open(2) from blocking and
		// the pipe (with its buffered data) alive until the process holds it.
		// O_NONBLOCK: whatever the path is now, opening it does not wait.
		holder, err := r.paths.open(fd.File.Path, os.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
		if err != nil {
			return nil, err
		}
		r.keep(holder)
		if fi, err := holder.Stat(); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			return nil, &core.ImageError{File: fd.File.Path, Reason: "was a FIFO, is not one now", Err: err}
		}
		if fd.Data != "" {
			if err := r.fillPipe(holder, fd.Data, fd.Packets); err != nil {
				return nil, err
			}
		}
		f, err := r.paths.open(fd.File.Path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK)
		if err != nil {
			return nil, err
		}
		if err := setFlags(f, fd.Flags); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case core.FDEventfd:
		efl := unix.EFD_CLOEXEC
		if fd.Semaphore {
			efl |= unix.EFD_SEMAPHORE
		}
		efd, err := unix.Eventfd(0, efl)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(efd), "eventfd")
		if fd.Count > 0 {
			var b [8]byte
			for i := range b {
				b[i] = byte(fd.Count >> (8 * i))
			}
			if _, err := unix.Write(efd, b[:]); err != nil {
				f.Close()
				return nil, fmt.Errorf("eventfd count %d: %w", fd.Count, err)
			}
		}
		if err := setFlags(f, fd.Flags); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case core.FDEpoll:
		// Registrations name the process's fd numbers: they are added by
		// epoll_ctl in the process once every fd is in place.
		efd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(efd), "epoll"), nil
	case core.FDTimerfd:
		t := fd.Timerfd
		if t == nil {
			return nil, errors.New("timerfd without its state")
		}
		tfd, err := unix.TimerfdCreate(t.Clock, unix.TFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("timerfd_create(clock %d): %w", t.Clock, err)
		}
		f := os.NewFile(uintptr(tfd), "timerfd")
		// fdinfo gives the time left even for absolute timers: re-arm it
		// relative to now.
		value := t.ValueNS
		if value <= 0 && t.IntervalNS > 0 {
			// A periodic timer that fired and was not read yet shows no
			// time left: the kernel moves it on only when it is read. Its
			// next expiry is an interval away.
			value = t.IntervalNS
		}
		spec := unix.ItimerSpec{Interval: unix.NsecToTimespec(t.IntervalNS), Value: unix.NsecToTimespec(value)}
		if value > 0 {
			if err := unix.TimerfdSettime(tfd, 0, &spec, nil); err != nil {
				f.Close()
				return nil, fmt.Errorf("timerfd_settime: %w", err)
			}
		}
		if t.Ticks > 0 {
			ticks := t.Ticks
			if _, err := raw.Ioctl(tfd, tfdIocSetTicks, &ticks); err != nil {
				r.warn("timerfd: %d unread expirations lost: %v", t.Ticks, err)
			}
		}
		if err := setFlags(f, fd.Flags); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case core.FDSignalfd:
		set := unix.Sigset_t{Val: [16]uint64{fd.SigMask}}
		sfd, err := unix.Signalfd(-1, &set, unix.SFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("signalfd: %w", err)
		}
		f := os.NewFile(uintptr(sfd), "signalfd")
		if err := setFlags(f, fd.Flags); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case core.FDPidfd:
		// On the process the restore made with that PID, which exists:
		// every process of the tree is created before any fd.
		pfd, err := unix.PidfdOpen(fd.PidfdPID, fd.Flags&(unix.O_NONBLOCK|unix.O_EXCL))
		if err != nil {
			return nil, fmt.Errorf("pidfd_open(%d): %w", fd.PidfdPID, err)
		}
		return os.NewFile(uintptr(pfd), "pidfd"), nil
	case core.FDExternal:
		return r.openExternal(fd)
	case core.FDSocket:
		return r.openSocket(fd)
	case core.FDInotify:
		return r.openInotify(ctx, fd)
	}
	return nil, fmt.Errorf("unknown fd kind %q", fd.Kind)
}

// roomForFDs raises the child's RLIMIT_NOFILE, if need be, so that dup3
// can give it its highest fd (and the agent's pidfd its place): it has
// migrate's own limit until the image's rlimits are set, after the fds.
func (r *restorer) roomForFDs() error {
	top := 64 + len(r.proc.FDs) // the agent's pidfd
	for _, fd := range r.proc.FDs {
		top = max(top, fd.FD)
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(r.pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	if uint64(top) < lim.Cur {
		return nil
	}
	lim.Cur = uint64(top) + 1
	lim.Max = max(lim.Max, lim.Cur)
	if err := unix.Prlimit(r.pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d for fd %d: %w", lim.Cur, top, err)
	}
	return nil
}

// tfdIocSetTicks is TFD_IOC_SET_TICKS, _IOW('T', 0, __u64).
const tfdIocSetTicks = 0x40085400

// setFlags sets the file status flags F_SETFL can change.
func setFlags(f *os.File, flags int) error {
	const settable = unix.O_APPEND | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK
	cur, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	want := cur&^settable | flags&settable
	if want == cur {
		return nil
	}
	_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, want)
	return err
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// fillPipe writes stored pipe contents into the write side w: as they
// were queued, in one stream or, with packets, one packet a write in
// packet mode (O_DIRECT).
func (r *session) fillPipe(w *os.File, blob string, packets []int) error {
	data, err := r.readBlob(r.img, blob)
	if err != nil {
		return err
	}
	fl, _ := unix.FcntlInt(w.Fd(), unix.F_GETFL, 0)
	mode := fl | unix.O_NONBLOCK
	if len(packets) > 0 {
		mode |= unix.O_DIRECT
	}
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETFL, mode); err != nil {
		return fmt.Errorf("refill pipe: F_SETFL %#o: %w", mode, err)
	}
	defer unix.FcntlInt(w.Fd(), unix.F_SETFL, fl)
	if len(packets) == 0 {
		if _, err := unix.Write(int(w.Fd()), data); err != nil {
			return fmt.Errorf("refill pipe with %d bytes: %w", len(data), err)
		}
		return nil
	}
	sum := 0
	for _, n := range packets {
		sum += n
		if n > os.Getpagesize() {
			return &core.ImageError{File: blob, Reason: fmt.Sprintf("a %d-byte packet queued in a pipe, more than a page (%d bytes) here", n, os.Getpagesize())}
		}
	}
	if sum != len(data) {
		return &core.ImageError{File: blob, Reason: fmt.Sprintf("%d bytes, its packets %d", len(data), sum)}
	}
	for i, n := range packets {
		if m, err := unix.Write(int(w.Fd()), data[:n]); err != nil || m != n {
			return fmt.Errorf("refill pipe with packet %d of %d bytes: wrote %d: %v", i, n, m, err)
		}
		data = data[n:]
	}
	return nil
}

// setOwner gives the new description f of fd the owner and the signal of
// its signal-driven I/O.
func setOwner(f *os.File, fd *core.FD) error {
	if fd.Signal != 0 {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETSIG, fd.Signal); err != nil {
			return fmt.Errorf("F_SETSIG %d: %w", fd.Signal, err)
		}
	}
	if o := fd.Owner; o != nil {
		if err := raw.FcntlOwner(int(f.Fd()), unix.F_SETOWN_EX, &raw.FOwnerEx{Type: int32(o.Type), PID: int32(o.PID)}); err != nil {
			return fmt.Errorf("F_SETOWN_EX %d (type %d): %w", o.PID, o.Type, err)
		}
	}
	return nil
}

// makeRoomForFDs makes sure every fd number of the final image can be
// taken: the child's RLIMIT_NOFILE (the husk's, until restoreState sets
// the image's) lets it hold them, and the agent's pidfd, placed when the
// layout was built (in a live migration, from a first layout that lists
// no fds), sits above all of them. A dup3 onto the pidfd's number would
// close it, and every later pidfd_getfd would fail with EBADF.
func (r *restorer) makeRoomForFDs() error {
	top := -1
	for _, fd := range r.proc.FDs {
		top = max(top, fd.FD)
	}
	if top < 0 {
		return nil
	}
	// Room for the fds, and above them the pidfd and the socket that
	// passes them (installFDs).
	need := uint64(max(top, r.agentFD) + 3)
	var lim unix.Rlimit
	if err := unix.Prlimit(r.pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < need {
		hard := lim.Max
		lim.Cur = need
		lim.Max = max(lim.Max, need)
		if err := unix.Prlimit(r.pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			// Above the hard limit without CAP_SYS_RESOURCE.
			return fmt.Errorf("fd %d: %w (%v)", top, &HostLimitError{What: "RLIMIT_NOFILE", Need: need, Limit: hard,
				Hint: "the service's hard limit, which it lacks CAP_SYS_RESOURCE to raise: start it with a higher one (LimitNOFILE= of its unit)"}, err)
		}
	}
	if r.agentFD > top {
		return nil
	}
	moved, err := r.sys("fcntl(F_DUPFD_CLOEXEC)", unix.SYS_FCNTL, uint64(r.agentFD), unix.F_DUPFD_CLOEXEC, uint64(top+1))
	if err != nil {
		return fmt.Errorf("move the agent's pidfd above fd %d: %w", top, err)
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, uint64(r.agentFD)); err != nil {
		return err
	}
	r.agentFD = int(moved)
	return nil
}

// descKey is the key of fd's open file description in r.descs.
func (r *restorer) descKey(fd *core.FD) string { return descKey(r.proc, fd) }

// descKey is the key of the open file description fd of process p had:
// the image's (core.FD.Key, the first fd that had it), or its own
// "PID:FD" for the first.
func descKey(p *core.Process, fd *core.FD) string {
	if fd.Key != "" {
		return fd.Key
	}
	return strconv.Itoa(p.PID) + ":" + strconv.Itoa(fd.FD)
}

// prebuildTCP rebuilds the process's TCP connections (some fifteen calls
// each, in repair mode) a few at a time, into r.descs, ahead of the other
// fds: hundreds of connections rebuilt one after the other are a good part
// of the frozen window.
func (r *restorer) prebuildTCP(ctx context.Context) error {
	var todo []*core.FD
	seen := map[string]bool{}
	for i := range r.proc.FDs {
		fd := &r.proc.FDs[i]
		key := r.descKey(fd)
		if fd.Kind != core.FDSocket || fd.Socket == nil || fd.Socket.TCP == nil || r.descs[key] != nil || seen[key] {
			continue
		}
		seen[key] = true
		todo = append(todo, fd)
	}
	if len(todo) < 16 {
		return nil // not worth the goroutines: restoreFDs opens them
	}
	files := make([]*os.File, len(todo))
	errs := make([]error, len(todo))
	par.Do(len(todo), min(runtime.GOMAXPROCS(0), 4), func(i int) {
		files[i], errs[i] = r.openFD(ctx, todo[i], nil)
	})
	var first error
	for i, fd := range todo {
		if files[i] != nil {
			r.keep(files[i])
			r.descs[r.descKey(fd)] = files[i]
			if err := setOwner(files[i], fd); err != nil && first == nil {
				first = fmt.Errorf("fd %d (%s): %w", fd.FD, fd.Kind, err)
			}
		}
		if errs[i] != nil && first == nil {
			first = fmt.Errorf("fd %d (%s): %w", fd.FD, fd.Kind, errs[i])
		}
	}
	return first
}

// openDescs opens, in the agent, the open file description of each of
// the process's fds that no fd before it had (r.descs, by key: another fd
// of this or another process that shared it): a description shared by
// several processes is opened once, by the first that has it in the
// tree's order, and every fd that had it gets that one. No ptrace: the
// descriptions of the whole tree are opened so, one process after the
// other, before the fds go into the processes, each on its tracer, at the
// same time (installOwnFDs).
func (r *restorer) openDescs(ctx context.Context) error {
	if err := r.prebuildTCP(ctx); err != nil {
		return err
	}
	p := r.proc
	for i := range p.FDs {
		if err := ctx.Err(); err != nil {
			return err
		}
		fd := &p.FDs[i]
		key := r.descKey(fd)
		if r.descs[key] != nil {
			continue
		}
		f, err := r.openFD(ctx, fd, r.pipes)
		if err != nil {
			return fmt.Errorf("fd %d (%s): %w", fd.FD, fd.Kind, err)
		}
		if err := setOwner(f, fd); err != nil {
			f.Close()
			return fmt.Errorf("fd %d (%s): %w", fd.FD, fd.Kind, err)
		}
		r.keep(f)
		r.descs[key] = f
	}
	return nil
}

// restoreFDs gives the child every fd of the image at its number, with its
// flags and offset, from the descriptions openDescs opened: fds that
// shared an open file description share one again. It only reads
// r.descs: the processes of a tree get theirs at the same time.
//
// Preconditions: openDescs ran for every process of the tree; the child
// has no fds but the agent's pidfd (layout closed the husk's and its own
// temporaries).
func (r *restorer) restoreFDs(ctx context.Context) error {
	p := r.proc
	if err := r.makeRoomForFDs(); err != nil {
		return err
	}
	want := make([]pendingFD, 0, len(p.FDs))
	for i := range p.FDs {
		fd := &p.FDs[i]
		f := r.descs[r.descKey(fd)]
		if f == nil {
			return fmt.Errorf("fd %d (%s): no open description", fd.FD, fd.Kind)
		}
		want = append(want, pendingFD{num: fd.FD, file: f, cloexec: fd.Cloexec})
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.installFDs(want); err != nil {
		return err
	}
	files := make(map[int]*os.File, len(want))
	for _, w := range want {
		files[w.num] = w.file
	}
	if err := r.takeLocks(files); err != nil {
		return err
	}
	if err := r.restoreEpoll(); err != nil {
		return err
	}
	// Seals last: a write seal would have refused the writable mappings.
	for i := range p.FDs {
		fd := &p.FDs[i]
		if fd.Kind == core.FDMemfd && fd.Seals != 0 {
			if err := r.seal(fd.File, fd.Seals); err != nil {
				return fmt.Errorf("fd %d: %w", fd.FD, err)
			}
		}
	}
	for i := range p.VMAs {
		v := &p.VMAs[i]
		if v.File != nil && v.Seals != 0 {
			if err := r.seal(v.File, v.Seals); err != nil {
				return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
			}
		}
	}
	return nil
}

// seal adds seals to the recreated memfd ref. A memfd restored without
// its seals would let the process (or whoever it passes the memfd to)
// resize or write what it had sealed: it is an error, not a warning.
func (r *restorer) seal(ref *core.FileRef, seals int) error {
	f := r.deletedFiles[fileKey{ref.Dev, ref.Ino, false}]
	if f == nil {
		return fmt.Errorf("memfd %s with seals %#x: not recreated", ref.Path, seals)
	}
	// (A memfd both held and mapped, or mapped twice, or by several
	// processes of a tree restoring their fds at the same time, comes
	// here more than once; after F_SEAL_SEAL a second F_ADD_SEALS fails.)
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err == nil && cur&seals == seals {
		return nil
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("memfd %s: seals %#x: %w", ref.Path, seals, err)
	}
	return nil
}
