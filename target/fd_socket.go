package target

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// openSocket recreates, in the agent, the socket fd describes.
//
// Unix sockets are rebuilt all together the first time one is asked for
// (pairs need both ends at once, a datagram socket's peer must exist
// before it connects, queues are refilled from the peer); they wait in
// r.files, named by their inode, until the fd that holds each is
// restored. TCP and UDP sockets are rebuilt one by one.
func (r *restorer) openSocket(fd *core.FD) (*os.File, error) {
	s := fd.Socket
	if s == nil {
		return nil, errors.New("socket without its description")
	}
	var f *os.File
	// Made in the processes' network namespace (a container's own).
	err := r.inNet(func() (err error) {
		switch s.Family {
		case unix.AF_UNIX:
			f, err = r.unixSocket(s.Ino)
		case unix.AF_INET, unix.AF_INET6:
			f, err = r.inetSocket(fd.FD, s)
		case unix.AF_NETLINK:
			f, err = r.netlinkSocket(fd.FD, s)
		default:
			err = fmt.Errorf("socket of family %d", s.Family)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := setFlags(f, fd.Flags); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// AddrError says that a socket's address cannot be had on this host.
type AddrError struct {
	PID  int // the process of the image holding the socket
	FD   int
	Addr string
	Err  error // why, when the kernel said
}

func (e *AddrError) Error() string {
	what := "not available on"
	if errors.Is(e.Err, unix.EADDRINUSE) {
		what = "in use on"
	}
	s := fmt.Sprintf("process %d fd %d: address %s %s this host", e.PID, e.FD, e.Addr, what)
	if e.Err != nil && e.Err != unix.EADDRINUSE {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *AddrError) Unwrap() error { return e.Err }

// preparedName is the name of the agent's file holding a rebuilt unix
// socket until its fd is restored.
func preparedName(ino uint64) string { return "migrate-socket:[" + strconv.FormatUint(ino, 10) + "]" }

// prepared returns a new descriptor of the rebuilt unix socket ino, or
// nil if it was not rebuilt yet.
func (r *restorer) prepared(ino uint64) (*os.File, error) {
	name := preparedName(ino)
	for _, f := range r.files {
		if f.Name() == name {
			return dupFile(f)
		}
	}
	return nil, nil
}

func (r *restorer) unixSocket(ino uint64) (*os.File, error) {
	if f, err := r.prepared(ino); f != nil || err != nil {
		return f, err
	}
	if err := r.buildUnix(); err != nil {
		return nil, err
	}
	f, err := r.prepared(ino)
	if f == nil && err == nil {
		err = fmt.Errorf("unix socket:[%d] was not rebuilt", ino)
	}
	return f, err
}
