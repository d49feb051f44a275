package proc

import (
	"errors"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Root is where procfs is mounted.
const Root = "/proc"

func pidPath(pid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/" + name
}

func taskPath(pid, tid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/" + name
}

// ReadFile reads a whole file of /proc (or /sys) as os.ReadFile does, with
// open(2), read(2) and close(2) alone. os.Open offers every file to the
// runtime's poller first: two fcntl calls to make it non-blocking, an
// epoll_ctl that procfs refuses, two more to make it blocking again, five
// system calls more for each file. The frozen window of a tree reads
// hundreds of /proc files (PostgreSQL's seven processes: about 370), so
// those were a fifth of its system calls. Errors are *os.PathError, as
// os.ReadFile's (errors.Is(err, fs.ErrNotExist) holds for ENOENT).
func ReadFile(path string) ([]byte, error) { return readFile(path, 512) }

// readFile reads a whole /proc file (ReadFile) with large reads: seq_file
// files such as maps take the target's mmap lock once per read(2), so
// fewer, larger reads are both faster and closer to one consistent state.
// hint is the first buffer size.
func readFile(path string, hint int) ([]byte, error) {
	fd, err := openRaw(path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readFD(fd, path, hint)
}

// readFD reads fd, the file path, to its end.
func readFD(fd int, path string, hint int) ([]byte, error) {
	buf := make([]byte, 0, hint)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// openRaw opens path (close-on-exec) without the runtime's poller (see
// ReadFile). Errors are *os.PathError.
func openRaw(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return fd, nil
	}
}

// isGone reports whether err says the process or file no longer exists.
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}
