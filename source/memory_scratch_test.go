package source

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
)

// TestWithoutRange cuts a range out of areas that it touches, splits one it
// lies inside, drops one it covers and leaves the others alone.
func TestWithoutRange(t *testing.T) {
	const lo, hi = 0x5000, 0x6000
	maps := []proc.Mapping{
		{Start: 0x1000, End: 0x2000},                          // apart
		{Start: 0x3000, End: 0x6000, VmFlags: []string{"rd"}}, // merged below
		{Start: 0x9000, End: 0xa000},                          // apart
	}
	got := withoutRange(maps, lo, hi)
	want := [][2]uint64{{0x1000, 0x2000}, {0x3000, 0x5000}, {0x9000, 0xa000}}
	requireBounds(t, got, want)
	if len(got[1].VmFlags) != 1 {
		t.Errorf("the piece lost its flags: %v", got[1].VmFlags)
	}
	requireBounds(t, withoutRange([]proc.Mapping{{Start: 0x5000, End: 0x8000}}, lo, hi), [][2]uint64{{0x6000, 0x8000}})
	requireBounds(t, withoutRange([]proc.Mapping{{Start: 0x4000, End: 0x8000}}, lo, hi), [][2]uint64{{0x4000, 0x5000}, {0x6000, 0x8000}})
	requireBounds(t, withoutRange([]proc.Mapping{{Start: 0x5000, End: 0x6000}}, lo, hi), nil)
}

// seizeCounter starts the counter workload and seizes it, ready for
// injected calls; cleanups detach and close the tracer.
func seizeCounter(t *testing.T) (*testutil.Proc, *ptrace.Tracer, *ptrace.Proc) {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "counter"))
	p.WaitLine(t, 2*short, 0, "ready")
	tracer := ptrace.NewTracer()
	t.Cleanup(tracer.Close)
	var tp *ptrace.Proc
	err := tracer.Do(func() error {
		var err error
		if tp, err = tracer.Seize(p.PID); err != nil {
			return err
		}
		return tp.FindGadget()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tracer.Do(tp.Detach) })
	return p, tracer, tp
}

func requireBounds(t *testing.T, got []proc.Mapping, want [][2]uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d areas %v, want %x", len(got), got, want)
	}
	for i := range got {
		if got[i].Start != want[i][0] || got[i].End != want[i][1] {
			t.Fatalf("area %d is %#x-%#x, want %#x-%#x", i, got[i].Start, got[i].End, want[i][0], want[i][1])
		}
	}
}

// TestVmFlagsWithScratchMerged is the race CI met in a live freeze: the
// layout is read from maps, then the scratch page is mapped (the kernel
// merges it with an anonymous read-write neighbour), then smaps is read.
// The flags must still be found, and the areas compared as they were.
func TestVmFlagsWithScratchMerged(t *testing.T) {
	p, tracer, tp := seizeCounter(t)
	var err error
	const n = 8
	var area uint64
	err = tracer.Do(func() error {
		// An anonymous read-write area with room for the scratch area
		// above it: n pages and the scratch area's, those unmapped again.
		var err error
		area, err = tp.Syscall(tp.Leader(), "mmap", unix.SYS_MMAP, 0, n*pageSize+scratchSize,
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		if err != nil {
			return err
		}
		_, err = tp.Syscall(tp.Leader(), "munmap", unix.SYS_MUNMAP, area+n*pageSize, scratchSize)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	vmas, err := readVMAsQuick(p.PID, nil)
	if err != nil {
		t.Fatal(err)
	}
	scratch := area + n*pageSize
	err = tracer.Do(func() error {
		_, err := tp.Syscall(tp.Leader(), "mmap", unix.SYS_MMAP, scratch, scratchSize,
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// As mapScratch: the batch code in the last page, an area of its own.
	if err := tp.MapBatchCode(tp.Leader(), scratch+scratchCode); err != nil {
		t.Fatal(err)
	}
	smaps, err := proc.ReadSmaps(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	merged := false
	for _, m := range smaps {
		if m.Start <= area && m.End >= scratch+scratchCode {
			merged = true
		}
	}
	if !merged {
		t.Fatalf("the kernel did not merge the page at %#x with the area at %#x: the test sets up nothing", scratch, area)
	}
	if err := addVmFlags(p.PID, vmas, smaps, scratch, scratchSize); err != nil {
		t.Fatalf("with the scratch page cut out: %v", err)
	}
	if err := addVmFlags(p.PID, vmas, smaps, 0, 0); err == nil {
		t.Fatal("the merged area matched the layout read before it: the test shows nothing")
	}
}

// TestFileRefsShared: the layouts of two processes that map the same
// files, read with the files looked at once for both (fileRefs), are
// those read each on its own.
func TestFileRefsShared(t *testing.T) {
	var pids []int
	for range 2 {
		p := testutil.Start(t, testutil.Build(t, "sleeper"), "pause")
		p.WaitLine(t, 2*short, 0, "sleeping")
		// Stopped: their layouts stay as they are between the reads.
		if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Kill(p.PID, unix.SIGCONT) })
		pids = append(pids, p.PID)
	}
	refs := newFileRefs()
	files := 0
	for _, pid := range pids {
		alone, err := readVMAsQuick(pid, nil)
		if err != nil {
			t.Fatal(err)
		}
		shared, err := readVMAsQuick(pid, refs)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(alone, shared) {
			t.Errorf("process %d: the layout read with the files of another differs:\n%+v\nwant\n%+v", pid, shared, alone)
		}
		for _, v := range alone {
			if v.File != nil {
				files++
			}
		}
	}
	if files == 0 || len(refs.m) == 0 || len(refs.m) > files/2 {
		t.Errorf("%d files looked at for %d file areas of two processes of one program: want each file once", len(refs.m), files)
	}
}
