package osthread

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNeverTheMainThread: a function that unshares its thread's fd table
// never runs on the main thread, whose fd table the kernel takes for the
// process's (/proc/PID/fd, pidfd_getfd): after each, a file opened here is
// in the main thread's table. Without the care Go takes here, this failed
// within a few hundred tries: this test binary's main goroutine waits
// while the tests run, and its thread takes other goroutines meanwhile.
func TestNeverTheMainThread(t *testing.T) {
	for i := range 500 {
		var tid int
		var err error
		Run(func() {
			tid = unix.Gettid()
			err = unix.Unshare(unix.CLONE_FILES)
		})
		if err != nil {
			t.Fatalf("unshare(CLONE_FILES): %v", err)
		}
		if tid == unix.Getpid() {
			t.Fatalf("run %d: ran on the main thread", i)
		}
		f, err := os.Open("/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		_, serr := os.Lstat(fmt.Sprintf("/proc/%d/task/%d/fd/%d", unix.Getpid(), unix.Getpid(), f.Fd()))
		f.Close()
		if serr != nil {
			t.Fatalf("run %d: a file opened after it is not in the main thread's fd table: %v", i, serr)
		}
	}
}
