package proc

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
)

// nsNames are the /proc/PID/ns names of the kinds InNamespace enters.
var nsNames = map[int]string{unix.CLONE_NEWIPC: "ipc", unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWNET: "net", unix.CLONE_NEWCGROUP: "cgroup"}

// InNamespace runs fn on a thread of its own that entered the namespace
// of kind (unix.CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNET or CLONE_NEWCGROUP) of process
// pid, and moves the thread back after. A thread that cannot be moved
// back stays locked, so that it dies with its goroutine instead of
// running other code in the wrong namespace.
func InNamespace(pid, kind int, fn func() error) error {
	name, ok := nsNames[kind]
	if !ok {
		return fmt.Errorf("namespace kind %#x", kind)
	}
	ch := make(chan error, 1)
	osthread.Go(func() {
		back, err := os.Open("/proc/thread-self/ns/" + name)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer back.Close()
		ns, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/" + name)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), kind); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns into the %s namespace of %d: %w", name, pid, err)
			return
		}
		err = fn()
		if berr := unix.Setns(int(back.Fd()), kind); berr != nil {
			// Left locked: the thread exits with this goroutine.
			ch <- fmt.Errorf("setns back from the %s namespace of %d: %w", name, pid, berr)
			return
		}
		runtime.UnlockOSThread()
		ch <- err
	})
	return <-ch
}

// NamespaceID identifies a namespace by the device and inode of its file.
type NamespaceID struct{ Dev, Ino uint64 }

func (n NamespaceID) String() string { return fmt.Sprintf("[%d]", n.Ino) }

// NamespaceOf is the identity of the namespace of file path
// (/proc/PID/ns/KIND).
func NamespaceOf(path string) (NamespaceID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NamespaceID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return NamespaceID{Dev: st.Dev, Ino: st.Ino}, nil
}

// NamespaceIoctl opens namespace file path and returns the identity of
// the namespace ioctl req (unix.NS_GET_USERNS: the user namespace that
// owns it; unix.NS_GET_PARENT) gives of it.
func NamespaceIoctl(path string, req uint) (NamespaceID, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NamespaceID{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	got, err := unix.IoctlRetInt(fd, req)
	if err != nil {
		return NamespaceID{}, &os.PathError{Op: "ioctl", Path: path, Err: err}
	}
	defer unix.Close(got)
	var st unix.Stat_t
	if err := unix.Fstat(got, &st); err != nil {
		return NamespaceID{}, os.NewSyscallError("fstat", err)
	}
	return NamespaceID{Dev: st.Dev, Ino: st.Ino}, nil
}
