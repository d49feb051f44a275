package proc

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// fdSize reads FDSize (the size of the fd table) from /proc/self/status.
func fdSize(t *testing.T) int {
	t.Helper()
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "FDSize:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}

// TestReserveFDs: the table grows to hold the fds asked for above the
// highest open one, and no fd is left open.
func TestReserveFDs(t *testing.T) {
	before, err := CountFDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	size := fdSize(t)
	if err := ReserveFDs(size + 300); err != nil {
		t.Fatal(err)
	}
	if got := fdSize(t); got < size+300 {
		t.Errorf("FDSize %d after ReserveFDs(%d), was %d", got, size+300, size)
	}
	if after, _ := CountFDs(os.Getpid()); after != before {
		t.Errorf("%d fds open after ReserveFDs, %d before", after, before)
	}
	// Room already there: nothing to do.
	if err := ReserveFDs(10); err != nil {
		t.Fatal(err)
	}
}
