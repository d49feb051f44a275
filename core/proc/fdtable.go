package proc

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// CountFDs returns how many fds pid has open.
func CountFDs(pid int) (int, error) {
	fds, err := readDirInts(pidPath(pid, "fd"))
	if err != nil {
		return 0, err
	}
	return len(fds), nil
}

// ReserveFDs grows this process's fd table, if need be, to hold n more fds
// above the highest one open (up to RLIMIT_NOFILE), so that opening them
// later does not grow it. The kernel grows the table of a multi-threaded
// process (every Go program) only after an RCU grace period, 8 to 25 ms
// on a busy host, and again at each doubling: hundreds of fds opened in a
// frozen window cost tens of milliseconds. The table never shrinks.
func ReserveFDs(n int) error {
	fds, err := readDirInts("/proc/self/fd")
	if err != nil {
		return err
	}
	top := 0
	if len(fds) > 0 {
		top = fds[len(fds)-1]
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return os.NewSyscallError("getrlimit", err)
	}
	want := uint64(top) + uint64(max(n, 0))
	if want >= lim.Cur {
		want = lim.Cur - 1
	}
	if want <= uint64(top) {
		return nil
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("eventfd", err)
	}
	defer unix.Close(efd)
	// A duplicate at the highest number grows the table to hold it.
	fd, err := unix.FcntlInt(uintptr(efd), unix.F_DUPFD_CLOEXEC, int(want))
	if err != nil {
		return fmt.Errorf("grow the fd table to %d: %w", want, os.NewSyscallError("fcntl", err))
	}
	return unix.Close(fd)
}
