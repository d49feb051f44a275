package proc

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// FDLink is one entry of /proc/PID/fd: the fd number and what readlink
// shows for it ("/path", "/path (deleted)", "pipe:[123]", "socket:[123]",
// "anon_inode:[eventfd]", "/memfd:name (deleted)", ...).
type FDLink struct {
	FD     int
	Target string
}

// ReadFDs lists the open fds of pid, sorted by number. An fd closed between
// the directory read and its readlink is left out; if the process itself is
// gone by then, the error says so.
func ReadFDs(pid int) ([]FDLink, error) {
	dir := pidPath(pid, "fd")
	fds, err := readDirInts(dir)
	if err != nil {
		return nil, err
	}
	out := make([]FDLink, 0, len(fds))
	skipped := false
	for _, fd := range fds {
		target, err := os.Readlink(dir + "/" + strconv.Itoa(fd))
		if errors.Is(err, fs.ErrNotExist) {
			skipped = true
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, FDLink{FD: fd, Target: target})
	}
	if skipped {
		// Tell "fd closed" from "process gone": the fd directory of an
		// exited process can no longer be opened.
		fd, err := openRaw(dir, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return nil, err
		}
		unix.Close(fd)
	}
	return out, nil
}

// ReadTIDs lists the threads of pid (/proc/PID/task), sorted.
func ReadTIDs(pid int) ([]int, error) {
	return readDirInts(pidPath(pid, "task"))
}

// ReadPIDs lists the processes visible in /proc, sorted.
func ReadPIDs() ([]int, error) {
	return readDirInts(Root)
}

// readDirInts returns the entries of dir whose names are decimal numbers,
// sorted.
func readDirInts(dir string) ([]int, error) {
	names, err := readDirNames(dir)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(names))
	for _, name := range names {
		n, err := parseUintBits([]byte(name), 10, 31)
		if err != nil {
			continue // "self", "thread-self", files of /proc
		}
		out = append(out, int(n))
	}
	slices.Sort(out)
	return out, nil
}

// readDirNames lists dir with getdents64 on a descriptor of its own, as
// File.Readdirnames does but without os.Open's poller calls (see
// ReadFile). "." and ".." are left out.
func readDirNames(dir string) ([]string, error) {
	fd, err := openRaw(dir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 8192)
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "readdirent", Path: dir, Err: err}
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// ReadCmdline reads /proc/PID/cmdline: the arguments, split at NUL bytes.
// A process that rewrote its arguments (setproctitle) may leave no final
// NUL; the last argument then runs to the end. Kernel threads and zombies
// have an empty cmdline and give nil.
func ReadCmdline(pid int) ([]string, error) {
	return readNULList(pidPath(pid, "cmdline"))
}

// ReadEnviron reads /proc/PID/environ, split at NUL bytes, as ReadCmdline.
func ReadEnviron(pid int) ([]string, error) {
	return readNULList(pidPath(pid, "environ"))
}

func readNULList(path string) ([]string, error) {
	data, err := readFile(path, 4096)
	if err != nil {
		return nil, err
	}
	return SplitNUL(data), nil
}

// SplitNUL splits NUL-terminated strings; a final string without its NUL
// counts too.
func SplitNUL(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	var out []string
	start := 0
	for i, c := range data {
		if c == 0 {
			out = append(out, string(data[start:i]))
			start = i + 1
		}
	}
	if start < len(data) {
		out = append(out, string(data[start:]))
	}
	return out
}

// ReadExe returns the target of /proc/PID/exe (with " (deleted)" if the
// executable was unlinked).
func ReadExe(pid int) (string, error) { return os.Readlink(pidPath(pid, "exe")) }

// ReadCwd returns the target of /proc/PID/cwd.
func ReadCwd(pid int) (string, error) { return os.Readlink(pidPath(pid, "cwd")) }

// ReadRoot returns the target of /proc/PID/root.
func ReadRoot(pid int) (string, error) { return os.Readlink(pidPath(pid, "root")) }

// ReadComm returns /proc/PID/task/TID/comm without its newline.
func ReadComm(pid, tid int) (string, error) {
	data, err := readFile(taskPath(pid, tid, "comm"), 64)
	if err != nil {
		return "", err
	}
	if n := len(data); n > 0 && data[n-1] == '\n' {
		data = data[:n-1]
	}
	return string(data), nil
}
