package kernel

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ProbePidfdGetfd gives a helper child the write end of a pipe as its fd 3,
// takes a copy of that fd with pidfd_open and pidfd_getfd, writes through
// the copy and reads the bytes back from the pipe.
func ProbePidfdGetfd(ctx context.Context) (string, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return "", fmt.Errorf("pipe2: %w", err)
	}
	r := os.NewFile(uintptr(p[0]), "probe-pipe-r")
	w := os.NewFile(uintptr(p[1]), "probe-pipe-w")
	defer r.Close()
	h, _, err := startHelper(ctx, "idle", w)
	w.Close() // the helper holds the only write end now
	if err != nil {
		return "", err
	}
	defer h.kill()

	pidfd, err := unix.PidfdOpen(h.pid(), 0)
	if err != nil {
		return "", unsupported(FeaturePidfdGetfd, "pidfd_open", err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, 3, 0)
	if err != nil {
		return "", unsupported(FeaturePidfdGetfd, "pidfd_getfd of the child's fd 3", err)
	}
	msg := []byte("pidfd")
	_, werr := unix.Write(fd, msg)
	unix.Close(fd)
	if werr != nil {
		return "", unsupported(FeaturePidfdGetfd, "write through the duplicated fd", werr)
	}
	if err := h.close(); err != nil {
		return "", err
	}
	// All write ends are closed now; read to EOF.
	got := make([]byte, 16)
	n, _ := r.Read(got)
	if string(got[:n]) != string(msg) {
		return "", unsupported(FeaturePidfdGetfd, fmt.Sprintf("the duplicated fd is not the child's: read %q back, wrote %q", got[:n], msg), nil)
	}
	return "duplicated fd 3 of a child, wrote through it into the child's pipe", nil
}
