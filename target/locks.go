package target

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// flockOf is the struct flock of a byte-range lock.
func flockOf(l core.FileLock) unix.Flock_t {
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: l.Start, Len: l.Len}
	if l.Write {
		fl.Type = unix.F_WRLCK
	}
	return fl
}

// takeLocks takes the file locks of the image once the process's fds are
// in place, each by a call injected into the process so that the kernel
// records the process as their holder (as /proc/locks shows): POSIX record
// locks by fcntl(F_SETLK), which belong to the process; OFD locks by
// fcntl(F_OFD_SETLK) and flock locks by flock(2), which belong to the open
// file description (one shared by several fds, or processes, lists its
// locks on each: taking one again changes nothing). Never blocking: a
// lock someone else took since the dump fails the restore (LockError).
func (r *restorer) takeLocks(files map[int]*os.File) error {
	for i := range r.proc.FDs {
		fd := &r.proc.FDs[i]
		for _, l := range fd.Locks {
			var err error
			switch l.Kind {
			case core.LockFlock:
				how := uint64(unix.LOCK_SH)
				if l.Write {
					how = unix.LOCK_EX
				}
				_, err = r.sys("flock", unix.SYS_FLOCK, uint64(fd.FD), how|unix.LOCK_NB)
			case core.LockPOSIX, core.LockOFD:
				cmd := uint64(unix.F_SETLK)
				if l.Kind == core.LockOFD {
					cmd = unix.F_OFD_SETLK
				}
				fl := flockOf(l)
				var addr uint64
				if addr, err = r.put(0, raw.Bytes(&fl)); err != nil {
					return err
				}
				_, err = r.sys("fcntl", unix.SYS_FCNTL, uint64(fd.FD), cmd, addr)
			}
			if err != nil {
				return r.lockError(fd, files[fd.FD], l, err)
			}
		}
	}
	return nil
}

// lockError names the lock that could not be taken and, if the kernel
// says, who holds a conflicting one.
func (r *restorer) lockError(fd *core.FD, f *os.File, l core.FileLock, err error) error {
	e := &LockError{PID: r.pid, FD: fd.FD, Lock: l, Err: err}
	if fd.File != nil {
		e.Path = fd.File.Path
	}
	if f != nil && l.Kind != core.LockFlock {
		fl := flockOf(l)
		if unix.FcntlFlock(f.Fd(), unix.F_GETLK, &fl) == nil && fl.Type != unix.F_UNLCK {
			e.Holder = int(fl.Pid)
		}
	}
	return e
}
