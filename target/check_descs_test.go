package target

import (
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// TestCheckDescs: fds that shared an open file description in the image
// (core.FD.Key) pass the check when they hold one description, and each
// one that holds a description of its own is named.
func TestCheckDescs(t *testing.T) {
	open := func() int {
		fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	first := open()
	dup, err := unix.FcntlInt(uintptr(first), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dup) })
	other := open()
	pid := os.Getpid()
	key := strconv.Itoa(pid) + ":" + strconv.Itoa(first)
	image := func(fds ...core.FD) []descHolder {
		return []descHolder{{pid: pid, proc: &core.Process{PID: pid, FDs: fds}}}
	}
	if d := checkDescs(image(core.FD{FD: first}, core.FD{FD: dup, Key: key})); len(d) != 0 {
		t.Errorf("a description held twice: %v", d)
	}
	d := checkDescs(image(core.FD{FD: first}, core.FD{FD: dup, Key: key}, core.FD{FD: other, Key: key}))
	if len(d) != 1 || d[0].What != "fd "+strconv.Itoa(other)+" description" {
		t.Errorf("an fd with a description of its own where the image shared one: %v, want it named", d)
	}
	// Not shared in the image: not compared.
	if d := checkDescs(image(core.FD{FD: first}, core.FD{FD: other})); len(d) != 0 {
		t.Errorf("two descriptions: %v", d)
	}
}
