package target

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/osthread"
)

// An epoll registration is keyed by the registered file and the fd number
// it was added under (a later EPOLL_CTL_MOD or DEL by the process names
// that number), and it belongs to the file, not to an fd table: it lasts
// while the epoll and the registered file do. So the agent adds them all
// itself, with native calls, from a thread of its own whose fd table is a
// private copy (unshare CLONE_FILES) in which each registered file sits at
// the process's number; the thread then ends, and its table with it. An
// injected epoll_ctl each cost ~20 us in the frozen window: milliseconds
// for a server with hundreds of connections. But for a signalfd: epoll
// waits for one on the signal queue of the task that added it, so the
// process adds those itself (addEpollInside).

// epollReg is a registration to add: the target fd to the epoll fd
// (numbers in the process).
type epollReg struct {
	ep, fd int
	ev     unix.EpollEvent
}

// restoreEpoll adds each epoll fd's registrations once every description
// is open (r.descs).
func (r *restorer) restoreEpoll() error {
	have := map[int]*core.FD{}
	for i := range r.proc.FDs {
		have[r.proc.FDs[i].FD] = &r.proc.FDs[i]
	}
	var regs, inside []epollReg
	for _, fd := range r.proc.FDs {
		if fd.Kind != core.FDEpoll {
			continue
		}
		for _, t := range fd.Epoll {
			if have[t.FD] == nil {
				r.warn("epoll fd %d: target fd %d is closed; its registration is dropped", fd.FD, t.FD)
				continue
			}
			ev := unix.EpollEvent{Events: t.Events}
			putEpollData(&ev, t.Data)
			g := epollReg{ep: fd.FD, fd: t.FD, ev: ev}
			if have[t.FD].Kind == core.FDSignalfd {
				// A signalfd is ready when its reader has a signal
				// pending, and epoll waits for it on the signal queue
				// of the task that added it: added by the agent, the
				// set would wait on the agent's signals, and a wait
				// without a timeout would never end for the process's.
				inside = append(inside, g)
				continue
			}
			regs = append(regs, g)
		}
	}
	if err := r.addEpollInside(inside); err != nil {
		return err
	}
	if len(regs) == 0 {
		return nil
	}
	// The agent's fd of each description involved, by process fd number.
	src := map[int]int{}
	top := 0
	for _, g := range regs {
		for _, n := range []int{g.ep, g.fd} {
			f := r.descs[r.descKey(have[n])]
			if f == nil {
				return fmt.Errorf("epoll: fd %d has no open description", n)
			}
			src[n] = int(f.Fd())
			top = max(top, n, int(f.Fd()))
		}
	}
	errc := make(chan error, 1)
	// A thread of its own, that ends with its private fd table.
	osthread.Go(func() {
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_FILES); err != nil {
				return fmt.Errorf("epoll: a private fd table: %w", err)
			}
			// Each file first above every number in play, then at the
			// process's number.
			moved := map[int]int{}
			for n, fd := range src {
				m, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, top+1)
				if err != nil {
					return fmt.Errorf("epoll: fd %d: %w", n, err)
				}
				moved[n] = m
			}
			for n, m := range moved {
				if err := unix.Dup3(m, n, unix.O_CLOEXEC); err != nil {
					return fmt.Errorf("epoll: fd %d: %w", n, err)
				}
			}
			for _, g := range regs {
				err := unix.EpollCtl(g.ep, unix.EPOLL_CTL_ADD, g.fd, &g.ev)
				if errors.Is(err, unix.EEXIST) {
					// An epoll set shared with a process restored before
					// (a parent's, inherited by fork), or held through two
					// fds: its registrations are listed by each holder,
					// and this one, of the same file at the same number,
					// was added already.
					continue
				}
				if err != nil {
					return fmt.Errorf("epoll fd %d: add fd %d: %w", g.ep, g.fd, err)
				}
			}
			return nil
		}()
	})
	return <-errc
}

// addEpollInside adds registrations from inside the process, by injected
// epoll_ctl calls (the process's fds are at their numbers).
func (r *restorer) addEpollInside(regs []epollReg) error {
	for _, g := range regs {
		// struct epoll_event, packed on x86-64: events, then the data.
		var b [12]byte
		binary.LittleEndian.PutUint32(b[0:], g.ev.Events)
		binary.LittleEndian.PutUint32(b[4:], uint32(g.ev.Fd))
		binary.LittleEndian.PutUint32(b[8:], uint32(g.ev.Pad))
		addr, err := r.put(0, b[:])
		if err != nil {
			return err
		}
		_, err = r.sys("epoll_ctl", unix.SYS_EPOLL_CTL, uint64(g.ep), unix.EPOLL_CTL_ADD, uint64(g.fd), addr)
		if errors.Is(err, unix.EEXIST) {
			continue // see restoreEpoll
		}
		if err != nil {
			return fmt.Errorf("epoll fd %d: add signalfd %d: %w", g.ep, g.fd, err)
		}
	}
	return nil
}

// putEpollData sets the 64-bit data of ev (x/sys/unix splits it in two on
// x86-64, where struct epoll_event is packed).
func putEpollData(ev *unix.EpollEvent, data uint64) {
	ev.Fd = int32(uint32(data))
	ev.Pad = int32(uint32(data >> 32))
}
