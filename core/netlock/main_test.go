package netlock

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// TestMain fails the run if the tests leave file descriptors open: a Lock
// holds its namespace open until Unlock or Disown, and must let go then.
func TestMain(m *testing.M) {
	// Start the runtime's poller first: its fds are created on first use and
	// are not a leak.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := openFDs()
	code := m.Run()
	if code == 0 {
		for fd, target := range openFDs() {
			if _, ok := before[fd]; !ok {
				fmt.Fprintf(os.Stderr, "leaked fd %d -> %s\n", fd, target)
				code = 1
			}
		}
	}
	os.Exit(code)
}

func openFDs() map[int]string {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		panic(err)
	}
	m := make(map[int]string)
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd == int(d.Fd()) {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + n)
		m[fd] = target
	}
	return m
}
