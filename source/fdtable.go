package source

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
)

// SharedFDTableError is a process whose fd table is shared with another
// process of the dump (clone(CLONE_FILES) without CLONE_THREAD), or a
// thread whose fd table is not its process's (it unshared it): the
// restore gives each process one table for all its threads, so it would
// come back different.
type SharedFDTableError struct {
	PID    int
	With   int // the other process sharing PID's table, or 0
	Thread int // the thread of PID with a table of its own, or 0
}

func (e *SharedFDTableError) Error() string {
	if e.Thread != 0 {
		return fmt.Sprintf("process %d: thread %d has an fd table of its own (it unshared CLONE_FILES), which migrate does not restore", e.PID, e.Thread)
	}
	return fmt.Sprintf("process %d shares its fd table with process %d (clone with CLONE_FILES), which migrate does not restore", e.PID, e.With)
}

// ControllingTTYError is a process with a controlling terminal, which
// migrate does not restore (a pty is issue 14's devpts work).
type ControllingTTYError struct {
	PID int
	TTY string // the terminal, e.g. /dev/pts/3
}

func (e *ControllingTTYError) Error() string {
	return fmt.Sprintf("process %d has a controlling terminal (%s), which migrate does not restore: start it without one (setsid, or from a service manager)", e.PID, e.TTY)
}

const (
	kcmpFiles = 2   // KCMP_FILES
	pfExiting = 0x4 // PF_EXITING, in the flags of /proc/PID/stat
)

// sameFiles says whether a and b (processes or threads) share one fd
// table. An error (one of them ended) counts as not shared.
func sameFiles(a, b int) bool {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), kcmpFiles, 0, 0, 0)
	return e == 0 && r == 0
}

// refuseFDTable refuses a process whose fd table the restore would not
// give back as it is: one with a controlling terminal, one with a thread
// that has a table of its own, or one that shares its table with a
// process of the tree read before it. It notes the process's table for
// the processes read after it.
func (d *dumper) refuseFDTable() error {
	st := d.stat
	if st == nil {
		var err error
		if st, err = proc.ReadStat(d.pid); err != nil {
			return fmt.Errorf("process %d: %w", d.pid, err)
		}
	}
	if st.TTYNr != 0 {
		return &ControllingTTYError{PID: d.pid, TTY: ttyName(uint64(st.TTYNr))}
	}
	tids, err := proc.ReadTIDs(d.pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	for _, tid := range tids {
		if tid != d.pid && !sameFiles(d.pid, tid) {
			// A thread that is ending has let go of its table already.
			if st, err := proc.ReadStat(tid); err != nil || st.State == 'Z' || st.State == 'X' || st.Flags&pfExiting != 0 {
				continue
			}
			return &SharedFDTableError{PID: d.pid, Thread: tid}
		}
	}
	for _, other := range d.tables {
		// Two processes that are ending have no table: kcmp finds them
		// alike (a tree that forks and exits all the time, read as it
		// runs).
		if other != d.pid && sameFiles(other, d.pid) && !exited(other) && !exited(d.pid) {
			return &SharedFDTableError{PID: d.pid, With: other}
		}
	}
	d.tables = append(d.tables, d.pid)
	return nil
}

// ttyName names the terminal device dev (tty_nr of /proc/PID/stat, or
// st_rdev): /dev/pts/N for a pty, its device numbers otherwise.
func ttyName(dev uint64) string {
	maj, mnr := unix.Major(dev), unix.Minor(dev)
	if maj >= 136 && maj <= 143 { // UNIX98_PTY_SLAVE_MAJOR and the next 7
		return fmt.Sprintf("/dev/pts/%d", (maj-136)*256+mnr)
	}
	return fmt.Sprintf("tty %d:%d", maj, mnr)
}

// ptyReason says why a character device rdev is refused: a pty master or
// slave, or /dev/tty (the controlling terminal), whose state (the other
// end, termios, the session) reopening a path would not give back.
func ptyReason(rdev uint64) string {
	maj, mnr := unix.Major(rdev), unix.Minor(rdev)
	switch {
	case maj == 5 && mnr == 2:
		return "a pty master (/dev/ptmx): migrate does not restore ptys yet"
	case maj >= 136 && maj <= 143:
		return "a pty slave (" + ttyName(rdev) + "): migrate does not restore ptys yet"
	case maj == 5 && mnr == 0:
		return "/dev/tty, the controlling terminal (a pty or a terminal): migrate does not restore it"
	}
	return ""
}
