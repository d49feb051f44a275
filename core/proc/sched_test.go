package proc

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadSchedSelf: the calling thread's scheduling state as another
// process would read it.
func TestReadSchedSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	s, err := ReadSched(tid)
	if err != nil {
		t.Fatal(err)
	}
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, c := range s.Affinity {
		for ; c != 0; c &= c - 1 {
			n++
		}
	}
	if s.Policy != 0 || s.Priority != 0 || s.Nice != 20-prio || n != set.Count() || s.TimerSlack == 0 {
		t.Errorf("ReadSched(self) = %+v; nice %d, %d CPUs", *s, 20-prio, set.Count())
	}
	if len(s.Affinity) == 0 || s.Affinity[len(s.Affinity)-1] == 0 && len(s.Affinity) > 1 {
		t.Errorf("affinity %x: trailing zero words", s.Affinity)
	}
}

func TestOwnIOPrio(t *testing.T) {
	for _, c := range []struct {
		s    Sched
		want int
	}{
		{Sched{IOPrio: 0}, 0},
		{Sched{Nice: 0, IOPrio: 2<<13 | 4}, 0},                             // BE, nice 0: none of its own
		{Sched{Nice: 5, IOPrio: 2<<13 | 5}, 0},                             // BE, nice 5
		{Sched{Nice: 5, IOPrio: 2<<13 | 1}, 2<<13 | 1},                     // BE 1: its own
		{Sched{Policy: unix.SCHED_IDLE, Nice: 7, IOPrio: 3<<13 | 5}, 0},    // idle from the policy
		{Sched{Policy: unix.SCHED_RR, Nice: -3, IOPrio: 1<<13 | 3}, 0},     // RT from the policy
		{Sched{Policy: unix.SCHED_RR, Nice: -3, IOPrio: 3 << 13}, 3 << 13}, // idle class, set
	} {
		if got := c.s.OwnIOPrio(); got != c.want {
			t.Errorf("%+v: OwnIOPrio %#x, want %#x", c.s, got, c.want)
		}
	}
}
