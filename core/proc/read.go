package proc

import (
	"errors"
	"io"
	"os"
	"strconv"
	"syscall"
)

// Root is where procfs is mounted.
const Root = "/proc"

func pidPath(pid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/" + name
}

func taskPath(pid, tid int, name string) string {
	return Root + "/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/" + name
}

// readFile reads a whole /proc file with large reads: seq_file files such as
// maps take the target's mmap lock once per read(2), so fewer, larger reads
// are both faster and closer to one consistent state. hint is the first
// buffer size. Errors are *os.PathError.
func readFile(path string, hint int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, path, hint)
}

func readAll(f *os.File, path string, hint int) ([]byte, error) {
	buf := make([]byte, 0, hint)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			var pe *os.PathError
			if !errors.As(err, &pe) {
				err = &os.PathError{Op: "read", Path: path, Err: err}
			}
			return buf, err
		}
	}
}

// isGone reports whether err says the process or file no longer exists.
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}
