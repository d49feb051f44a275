package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// startDirty starts the dirty workload: mib MiB rewritten at rate MB/s,
// plus args ("churn").
func startDirty(t testing.TB, mib, rate int, args ...string) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "dirty"), append([]string{fmt.Sprint(mib), fmt.Sprint(rate), "300"}, args...)...)
	p.WaitLine(t, long, 0, "ready")
	p.WaitLine(t, long, 0, "tick 3 ")
	return p
}

// verifyDirty asks the restored workload to check every page against its
// generation table, and fails the test unless all match.
func verifyDirty(t *testing.T, p *testutil.Proc) {
	t.Helper()
	from := len(p.Lines(t))
	p.Signal(t, unix.SIGUSR1)
	line, _ := p.WaitLine(t, long, from, "verify ")
	if !strings.HasPrefix(line, "verify ok") {
		t.Fatalf("memory after restore: %s", line)
	}
	// And it goes on writing.
	last := p.Lines(t)
	p.WaitLine(t, long, len(last), "tick ")
}

func trackerWorks(t *testing.T, name string) {
	t.Helper()
	var probe func(context.Context) (string, error)
	switch name {
	case source.TrackerUffdWP:
		probe = kernel.ProbeUffdWP
	case source.TrackerSoftDirty:
		probe = kernel.ProbeSoftDirty
	default:
		return
	}
	if _, err := probe(context.Background()); err != nil {
		// A kernel without it (soft-dirty here): the backend's own tests
		// run under a kernel that has it (scripts/vmtest.sh).
		t.Skipf("%s tracking does not work on this kernel: %v", name, err)
	}
}

// TestPreCopyExact dumps a process that keeps rewriting its memory with
// pre-copy, restores it, and has it check every page: the image holds the
// newest copy of each, whatever round sent it.
func TestPreCopyExact(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tracker := range []string{source.TrackerUffdWP, source.TrackerSoftDirty, source.TrackerHash} {
		t.Run(tracker, func(t *testing.T) {
			trackerWorks(t, tracker)
			p := startDirty(t, 64, 50)
			dir := t.TempDir()
			pol := source.DefaultPolicy
			pol.TargetDowntime = 5 * time.Millisecond // make it work for it
			rep, err := source.Dump(context.Background(), source.DumpOptions{
				PID: p.PID, Dir: dir, PreCopy: true, Tracker: tracker, Policy: pol, Logger: testLogger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			p.Reap(t)
			if rep.Tracker != tracker {
				t.Errorf("report says tracker %q, want %q", rep.Tracker, tracker)
			}
			if len(rep.Rounds) < 2 {
				t.Fatalf("%d rounds, want pre-copy rounds and a final one", len(rep.Rounds))
			}
			last := rep.Rounds[len(rep.Rounds)-1]
			if !last.Frozen {
				t.Errorf("last round not marked frozen: %+v", last)
			}
			for _, r := range rep.Rounds[:len(rep.Rounds)-1] {
				if r.Frozen {
					t.Errorf("pre-copy round %d marked frozen", r.Round)
				}
			}
			if first := rep.Rounds[0]; first.PagesSent < 64*256 {
				t.Errorf("first round sent %d pages, want the whole 64 MiB region at least", first.PagesSent)
			}
			if stop := rep.Rounds[len(rep.Rounds)-2].Stop; stop == "" {
				t.Errorf("the last pre-copy round does not say why pre-copy stopped")
			}
			t.Logf("tracker %s: %d rounds, final round %d pages in %.1f ms frozen", tracker, len(rep.Rounds), last.PagesSent, last.HeldMS)
			img, err := core.ReadImage(dir)
			if err != nil {
				t.Fatal(err)
			}
			if img.Pages.Rounds != len(rep.Rounds) {
				t.Errorf("image has %d rounds, the report %d", img.Pages.Rounds, len(rep.Rounds))
			}
			r := restoreOK(t, dir, p.Log)
			verifyDirty(t, r)
		})
	}
}

// TestPreCopyLayoutChanges: the process unmaps and maps an area again
// (at one of two places) while pre-copy runs. Pages sent in early rounds
// for memory unmapped later must not break the restore or leak stale data
// into what is mapped there later; memory mapped later comes whole; pages
// it never touched read as zeros.
func TestPreCopyLayoutChanges(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tracker := range []string{source.TrackerUffdWP, source.TrackerHash} {
		t.Run(tracker, func(t *testing.T) {
			trackerWorks(t, tracker)
			for attempt := 0; attempt < 3; attempt++ {
				p := startDirty(t, 32, 20, "churn")
				dir := t.TempDir()
				// A tight target and a slow process, so that rounds go on
				// across the layout changes (one each 300 ms).
				pol := source.DefaultPolicy
				pol.TargetDowntime = time.Microsecond
				pol.MaxRounds = 40
				pol.MinShrink = 0
				pol.Patience = 40
				start := time.Now()
				_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, PreCopy: true, Tracker: tracker, Policy: pol})
				if err != nil {
					t.Fatal(err)
				}
				p.Reap(t)
				verifyDirty(t, restoreOK(t, dir, p.Log))
				if time.Since(start) > 300*time.Millisecond {
					return // pre-copy outlived at least one layout change
				}
				t.Logf("pre-copy took %v, shorter than a layout change; again", time.Since(start))
			}
		})
	}
}

// BenchmarkPreCopy compares the frozen time of a plain dump with the final
// round of a pre-copy dump, for a 1 GiB process rewriting 50 MB/s of its
// memory, images on tmpfs; median and spread of 3 runs each.
func BenchmarkPreCopy(b *testing.B) {
	testutil.RequireRoot(b)
	const mib, rate, runs = 1024, 50, 3
	tmp, err := os.MkdirTemp("/dev/shm", "migrate-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	type result struct {
		frozen, total float64
		rounds        int
		final         uint64
		wire          uint64
	}
	measure := func(pre bool, tracker string) []result {
		var out []result
		for i := 0; i < runs; i++ {
			p := startDirty(b, mib, rate)
			dir := filepath.Join(tmp, fmt.Sprint("img", i))
			rep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, PreCopy: pre, Tracker: tracker})
			if err != nil {
				p.Stop(b)
				b.Fatal(err)
			}
			p.Reap(b)
			last := rep.Rounds[len(rep.Rounds)-1]
			out = append(out, result{rep.FrozenMS, rep.TotalMS, len(rep.Rounds), last.PagesSent, rep.BytesWire})
			os.RemoveAll(dir)
		}
		return out
	}
	med := func(rs []result, f func(result) float64) string {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return fmt.Sprintf("%8.1f (%6.1f-%6.1f)", v[len(v)/2], v[0], v[len(v)-1])
	}
	rows := []struct {
		name string
		rs   []result
	}{{"plain dump", measure(false, "")}}
	for _, tr := range []string{source.TrackerUffdWP, source.TrackerHash} {
		rows = append(rows, struct {
			name string
			rs   []result
		}{"pre-copy " + tr, measure(true, tr)})
	}
	fmt.Printf("\n%d MiB process rewriting %d MB/s, image on tmpfs, median (min-max) of %d runs\n", mib, rate, runs)
	fmt.Printf("%-20s %24s %24s %8s %12s %12s\n", "", "frozen ms", "total ms", "rounds", "final pages", "image MiB")
	for _, r := range rows {
		fmt.Printf("%-20s %24s %24s %8d %12d %12.0f\n", r.name,
			med(r.rs, func(x result) float64 { return x.frozen }), med(r.rs, func(x result) float64 { return x.total }),
			r.rs[0].rounds, r.rs[0].final, float64(r.rs[0].wire)/(1<<20))
	}
}

// TestPreCopyTree dumps a tree that changes shape all the time (treechurn:
// a short-lived child forked every 2 ms, keepers forked on demand while
// the dump runs) with pre-copy: processes forked during pre-copy join it
// with their own page files, those that exit leave (their files go), and
// the image holds the tree as it was frozen. Restored, every process of
// it finds its memory as it wrote it and carries on.
func TestPreCopyTree(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "treechurn"), "2")
	t.Cleanup(func() {
		p.Stop(t)
		reapChurn(t)
	})
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, long, 3)
	unix.Kill(p.PID, unix.SIGUSR2)
	p.WaitLine(t, short, 0, "keeper ")
	// Keepers join while pre-copy runs (treechurn forks at most 8).
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 6; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				unix.Kill(p.PID, unix.SIGUSR2)
			}
		}
	}()
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{
		PID: p.PID, Dir: dir, Tree: true, PreCopy: true, Logger: testLogger(t),
		Policy: source.Policy{MaxRounds: 5, TargetDowntime: 0, MinShrink: 0, Patience: 4},
	})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	linesThen := len(p.Lines(t))
	p.Reap(t)
	reapChurn(t)
	if len(rep.Rounds) < 3 {
		t.Errorf("%d rounds, want pre-copy rounds and a final one", len(rep.Rounds))
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Every process of the image has its page file, and no other file
	// is left (those of processes that left the tree are gone).
	want := map[string]bool{img.Pages.File: true}
	var running, zombies int
	for _, m := range img.Tree {
		if m.Zombie != nil {
			zombies++
			continue
		}
		running++
		if m.Pages == nil {
			t.Errorf("process %d has no pages", m.PID)
			continue
		}
		want[m.Pages.File] = true
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pages") && !want[e.Name()] {
			t.Errorf("page file %s of no process of the image", e.Name())
		}
	}
	for f := range want {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("page file of the image: %v", err)
		}
	}
	keepers := map[int]bool{}
	for _, l := range p.Lines(t) {
		if s, ok := strings.CutPrefix(l, "keeper "); ok {
			var k int
			fmt.Sscan(s, &k)
			keepers[k] = true
		}
	}
	t.Logf("%d rounds; the tree frozen: root and %d processes, %d zombies, %d keepers forked", len(rep.Rounds), running, zombies, len(keepers))

	r := restoreOK(t, dir, p.Log)
	t.Cleanup(func() {
		r.Stop(t)
		reapChurn(t)
	})
	after := func(prefix string) {
		testutil.WaitFor(t, long, fmt.Sprintf("a line %q after the restore", prefix), func() bool {
			for _, l := range r.Lines(t)[linesThen:] {
				if strings.HasPrefix(l, prefix) {
					return true
				}
			}
			return false
		})
	}
	r.WaitTick(t, long, r.LastTick(t)+3)
	for _, m := range img.Tree {
		switch {
		case m.Zombie != nil:
			after(fmt.Sprintf("reaped %d status=%d", m.PID, (m.PID&0x7f)<<8))
		case keepers[m.PID]:
			after(fmt.Sprintf("alive pid=%d ", m.PID))
		default:
			after(fmt.Sprintf("done pid=%d ", m.PID))
		}
	}
	for _, l := range r.Lines(t) {
		if strings.HasPrefix(l, "corrupt") || strings.HasPrefix(l, "FAIL") {
			t.Errorf("%q", l)
		}
	}
}
