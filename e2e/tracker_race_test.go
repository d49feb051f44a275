package e2e

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source/track"
)

// TestTrackerRace checks a tracker against the truth while the process
// writes as fast as it can: between two snapshots of its memory taken with
// the process stopped, every page that changed must have been reported by
// the Dirty call made while it ran or by the one made once it stopped. It
// found uffd-wp scans racing with writes losing some (now each scan runs
// with the process paused).
func TestTrackerRace(t *testing.T) {
	for _, name := range []string{track.UffdWP, track.Hash} {
		t.Run(name, func(t *testing.T) { trackerRace(t, name) })
	}
}

func trackerRace(t *testing.T, name string) {
	testutil.RequireRoot(t)
	trackerWorks(t, name)
	w := startDirty(t, 128, 100)
	pid := w.PID
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	var memAt uint64
	var vmas []core.VMA
	for _, l := range strings.Split(string(maps), "\n") {
		var a, b uint64
		fmt.Sscanf(l, "%x-%x", &a, &b)
		if b-a >= 128<<20 && strings.Contains(l, "rw-p") {
			memAt = b - 128<<20
			vmas = append(vmas, core.VMA{Start: a, End: b, Prot: unix.PROT_READ | unix.PROT_WRITE, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon})
		}
	}
	tr := ptrace.NewTracer()
	defer tr.Close()
	tk, err := track.New(name, pid)
	if err != nil {
		t.Fatal(err)
	}
	pp, err := tr.Seize(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := pp.FindGadget(); err != nil {
		t.Fatal(err)
	}
	if err := tk.Start(pp, vmas); err != nil {
		t.Fatal(err)
	}
	if err := pp.Detach(); err != nil {
		t.Fatal(err)
	}
	defer tk.Close()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop := func() {
		unix.Kill(pid, unix.SIGSTOP)
		testutil.WaitFor(t, short, "stopped", func() bool { st, _ := testutil.State(pid); return st == 'T' })
	}
	snap := func() []byte {
		b := make([]byte, 128<<20)
		if _, err := f.ReadAt(b, int64(memAt)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	in := func(rs []track.PageRange, a uint64) bool {
		for _, r := range rs {
			if a >= r.Start && a < r.End {
				return true
			}
		}
		return false
	}
	stop()
	prev := snap()
	if _, err := tk.Dirty(vmas); err != nil {
		t.Fatal(err)
	}
	lost := 0
	var pd1, pd2 []track.PageRange
	for it := 0; it < 40 && lost < 20; it++ {
		unix.Kill(pid, unix.SIGCONT)
		time.Sleep(time.Duration(rand.Intn(100)) * time.Millisecond)
		t1 := time.Now()
		d1, err := tk.Dirty(vmas)
		dt := time.Since(t1)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.Intn(20)) * time.Millisecond)
		stop()
		cur := snap()
		d2, err := tk.Dirty(vmas)
		if err != nil {
			t.Fatal(err)
		}
		changed := 0
		for i := 0; i < 32768; i++ {
			a := memAt + uint64(i)*4096
			if !bytes.Equal(prev[i*4096:(i+1)*4096], cur[i*4096:(i+1)*4096]) {
				changed++
				if !in(d1, a) && !in(d2, a) {
					lost++
					t.Errorf("iteration %d: page %d (%#x) changed but was reported by neither scan (running scan took %v, %d ranges; stopped scan %d ranges); in previous d1 %v d2 %v", it, i, a, dt, len(d1), len(d2), in(pd1, a), in(pd2, a))
				}
			}
		}
		prev = cur
		pd1, pd2 = d1, d2
	}
	unix.Kill(pid, unix.SIGCONT)
	if lost > 0 {
		t.Errorf("%s lost %d written pages", name, lost)
	}
}
