package proc

import (
	"errors"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// mmapTest maps n anonymous pages with flags (MAP_PRIVATE or MAP_SHARED) and
// unmaps them at cleanup. Transparent huge pages are turned off for the
// region so touching one page maps one page.
func mmapTest(t testing.TB, n int, flags int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, n*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, flags|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		t.Fatal(err)
	}
	return mem
}

func openSelfPagemap(t testing.TB) *Pagemap {
	t.Helper()
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	return pm
}

func TestPagemapPrivate(t *testing.T) {
	const n = 64
	ps := os.Getpagesize()
	mem := mmapTest(t, n, unix.MAP_PRIVATE)
	touched := map[int]bool{0: true, 3: true, 10: true, 11: true, 40: true, n - 1: true}
	for i := range touched {
		mem[i*ps] = 1
	}
	pm := openSelfPagemap(t)
	start := raw.AddrOf(mem)
	out := make([]PagemapEntry, 0, 2*n)
	got, err := pm.Read(start, start+n*uint64(ps), out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || &got[0] != &out[:1][0] {
		t.Fatalf("Read returned %d entries, reused buffer: %v", len(got), &got[0] == &out[:1][0])
	}
	for i, e := range got {
		if e.Present() != touched[i] {
			t.Errorf("page %d: present %v, touched %v (entry %#x)", i, e.Present(), touched[i], uint64(e))
		}
		if !touched[i] {
			if e != 0 {
				t.Errorf("untouched page %d: entry %#x", i, uint64(e))
			}
			continue
		}
		if e.FileOrShared() || !e.Exclusive() || e.Swapped() || e.UffdWP() {
			t.Errorf("page %d: entry %#x: file/shared %v exclusive %v swapped %v", i, uint64(e), e.FileOrShared(), e.Exclusive(), e.Swapped())
		}
		if e.PFN() == 0 {
			t.Errorf("page %d: PFN 0 (needs CAP_SYS_ADMIN)", i)
		}
	}

	// A sub-range, and an empty one.
	got, err = pm.Read(start+3*uint64(ps), start+5*uint64(ps), got)
	if err != nil || len(got) != 2 || !got[0].Present() || got[1].Present() {
		t.Errorf("sub-range: %v, %v", got, err)
	}
	got, err = pm.Read(start, start, got)
	if err != nil || len(got) != 0 {
		t.Errorf("empty range: %v, %v", got, err)
	}
}

func TestPagemapShared(t *testing.T) {
	const n = 16
	ps := os.Getpagesize()
	mem := mmapTest(t, n, unix.MAP_SHARED)
	for _, i := range []int{1, 2, 9} {
		mem[i*ps] = 1
	}
	pm := openSelfPagemap(t)
	start := raw.AddrOf(mem)
	got, err := pm.Read(start, start+n*uint64(ps), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range got {
		want := i == 1 || i == 2 || i == 9
		if e.Present() != want || (want && !e.FileOrShared()) {
			t.Errorf("page %d: entry %#x, touched %v", i, uint64(e), want)
		}
	}
}

func TestPagemapErrors(t *testing.T) {
	pm := openSelfPagemap(t)
	for _, r := range [][2]uint64{{1, 4096}, {0, 4095}, {8192, 4096}} {
		if _, err := pm.Read(r[0], r[1], nil); err == nil {
			t.Errorf("Read(%#x, %#x) did not fail", r[0], r[1])
		}
	}
	// Past the top of the user address space the kernel returns nothing.
	_, err := pm.Read(0xffffffffff600000, 0xffffffffff601000, nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read past user space: %v", err)
	}
}

func TestPagemapExited(t *testing.T) {
	cmd := startChild(t, "sleep", "30")
	pid := cmd.Process.Pid
	waitState(t, pid, 'S')
	maps, err := ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := OpenPagemap(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	m := maps[0]
	got, err := pm.Read(m.Start, m.End, nil)
	if err != nil || !got[0].Present() || !got[0].FileOrShared() {
		t.Fatalf("child's first page: %v, %v", got, err)
	}
	cmd.Process.Kill()
	waitState(t, pid, 'Z')
	if _, err := pm.Read(m.Start, m.End, got); !errors.Is(err, unix.ESRCH) {
		t.Errorf("pagemap read of a zombie: %v, want ESRCH", err)
	}
	cmd.Wait()
	if _, err := pm.Read(m.Start, m.End, got); !errors.Is(err, unix.ESRCH) {
		t.Errorf("pagemap read of a reaped process: %v, want ESRCH", err)
	}
	if _, err := OpenPagemap(pid); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenPagemap of a reaped process: %v", err)
	}
}

func TestPagemapFd(t *testing.T) {
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(pm.Fd(), &st); err != nil {
		t.Errorf("fstat of Fd(): %v", err)
	}
	if err := pm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pm.Read(0, 4096, nil); err == nil {
		t.Errorf("Read after Close succeeded")
	}
}

// BenchmarkPagemapRead1GiB reads the entries of a 1 GiB region (262144
// entries, 2 MiB) in one call; SetBytes counts the address space covered.
func BenchmarkPagemapRead1GiB(b *testing.B) {
	const size = 1 << 30
	ps := os.Getpagesize()
	for _, bc := range []struct {
		name  string
		touch int // touch every touch-th page; 0: none
		thp   bool
	}{
		{"empty", 0, false},
		{"every16th", 16, false},
		{"all", 1, false},
		{"all-thp", 1, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			mem := mmapTest(b, size/ps, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
			if bc.thp {
				if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
					b.Skip("MADV_HUGEPAGE:", err)
				}
			}
			if bc.touch > 0 {
				for i := 0; i < len(mem); i += bc.touch * ps {
					mem[i] = 1
				}
			}
			pm := openSelfPagemap(b)
			start := raw.AddrOf(mem)
			out := make([]PagemapEntry, size/ps)
			b.SetBytes(size)
			b.ResetTimer()
			for b.Loop() {
				var err error
				out, err = pm.Read(start, start+size, out)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			present := 0
			for _, e := range out {
				if e.Present() {
					present++
				}
			}
			b.ReportMetric(float64(present), "present-pages")
		})
	}
}
