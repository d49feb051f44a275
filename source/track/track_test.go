package track

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/internal/testutil/workload"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// The tracker tests run the test binary itself as the tracked process:
// internal/testutil/workload.

const (
	// requireSoftDirtyEnv=1 turns the soft-dirty tests' skip into a
	// failure: set by the VM test, whose kernel has soft-dirty.
	requireSoftDirtyEnv = "MIGRATE_REQUIRE_SOFTDIRTY"
	// requireUffdEnv=1 does the same for uffd-wp.
	requireUffdEnv = "MIGRATE_REQUIRE_UFFDWP"
)

const pg = trackPage

// skipUnsupported skips a test whose backend this kernel lacks, naming
// what is missing, unless the environment says the backend must be there.
func skipUnsupported(t testing.TB, name string, err error) {
	t.Helper()
	var uts unix.Utsname
	unix.Uname(&uts)
	rel := unix.ByteSliceToString(uts.Release[:])
	must := (name == SoftDirty && os.Getenv(requireSoftDirtyEnv) == "1") ||
		(name == UffdWP && os.Getenv(requireUffdEnv) == "1")
	if must {
		t.Fatalf("%s tracker required here but not supported on kernel %s: %v", name, rel, err)
	}
	t.Skipf("%s tracker not supported on kernel %s: %v", name, rel, err)
}

// newTestTracker makes a tracker of the named backend for w, or skips.
func newTestTracker(t testing.TB, name string, w *workload.Workload) Tracker {
	t.Helper()
	tr, err := New(name, w.PID)
	if errors.Is(err, kernel.ErrNotSupported) {
		skipUnsupported(t, name, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// startTracking seizes w, starts tr and detaches, as the pre-copy loop
// does (StartRunning: uffd-wp arms its areas after the detach; e2e's
// TestTrackerRace starts with Start alone).
func startTracking(t testing.TB, tr Tracker, w *workload.Workload) {
	t.Helper()
	tracer := ptrace.NewTracer()
	defer tracer.Close()
	p, err := tracer.Seize(w.PID)
	if err != nil {
		t.Fatal(err)
	}
	if err := StartRunning(tr, p, workload.Layout(t, w.PID), p.Detach); err != nil {
		t.Fatalf("%s Start: %v", tr.Name(), err)
	}
}

func dirty(t testing.TB, tr Tracker, w *workload.Workload) []PageRange {
	t.Helper()
	rs, err := tr.Dirty(workload.Layout(t, w.PID))
	if err != nil {
		t.Fatalf("%s Dirty: %v", tr.Name(), err)
	}
	for i, r := range rs {
		if r.Start%pg != 0 || r.End%pg != 0 || r.End <= r.Start || (i > 0 && rs[i-1].End >= r.Start) {
			t.Fatalf("%s Dirty: ranges not page aligned, sorted and merged: %v", tr.Name(), rs)
		}
	}
	return rs
}

// pagesIn returns the page numbers, relative to start, of the pages of rs
// in [start, start+n pages).
func pagesIn(rs []PageRange, start uint64, n int) []int {
	var out []int
	end := start + uint64(n)*pg
	for _, r := range intersect(rs, []PageRange{{start, end}}) {
		for a := r.Start; a < r.End; a += pg {
			out = append(out, int((a-start)/pg))
		}
	}
	return out
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// expect checks that, within each of regions, rs reports exactly the
// pages of want (nil: none).
func expect(t testing.TB, step string, rs []PageRange, regions []workload.Region, want map[string][]int) {
	t.Helper()
	for _, r := range regions {
		got := pagesIn(rs, r.Start, r.Pages)
		w := want[r.Name]
		if !slices.Equal(got, w) {
			t.Errorf("%s: region %s (%d pages at %#x): reported pages %s, want %s", step, r.Name, r.Pages, r.Start, pageList(got), pageList(w))
		}
	}
}

func pageList(ps []int) string {
	if len(ps) == 0 {
		return "none"
	}
	var parts []string
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(ps[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", ps[i], ps[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

var backends = []string{UffdWP, SoftDirty, Hash}

// TestTrackExact: writes between rounds are reported exactly, in private,
// shared and private file memory, by the process and by the kernel, and
// pages that lose their data are reported too.
func TestTrackExact(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			file := filepath.Join(t.TempDir(), "data")
			if err := os.WriteFile(file, []byte(strings.Repeat("x", 8*pg)), 0o644); err != nil {
				t.Fatal(err)
			}
			a := w.Map("map", "A", 64, 0)
			w.Call("populate A")
			s := w.Map("mapshared", "S", 16, 0)
			w.Call("populate S")
			f := workload.Region{Name: "F", Pages: 8}
			ans := w.Call("mapfile F %s 8", file)
			f.Start, _ = strconv.ParseUint(ans, 0, 64)
			w.Call("readall F")
			u := w.Map("map", "U", 16, 0) // never touched before Start
			regions := []workload.Region{a, s, f, u}

			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			if tr.Name() != name {
				t.Fatalf("Name() = %q, want %q", tr.Name(), name)
			}

			expect(t, "nothing written", dirty(t, tr, w), regions, nil)

			w.Call("write A 1 5 6 63")
			w.Call("write S 3")
			w.Call("write F 2")
			w.Call("write U 7")
			expect(t, "first writes", dirty(t, tr, w), regions, map[string][]int{"A": {1, 5, 6, 63}, "S": {3}, "F": {2}, "U": {7}})

			w.Call("write A 5")
			w.Call("write A 5")
			expect(t, "a page written twice", dirty(t, tr, w), regions, map[string][]int{"A": {5}})

			expect(t, "nothing written again", dirty(t, tr, w), regions, nil)

			w.Call("kwrite A 7")
			w.Call("kwrite U 1")
			expect(t, "written by the kernel", dirty(t, tr, w), regions, map[string][]int{"A": {7}, "U": {1}})

			w.Call("dontneed A 9")
			expect(t, "MADV_DONTNEED", dirty(t, tr, w), regions, map[string][]int{"A": {9}})
			w.Call("read A 9")
			expect(t, "zero page read back", dirty(t, tr, w), regions, nil)
			w.Call("dontneed A 10")
			w.Call("read A 10")
			expect(t, "MADV_DONTNEED then read", dirty(t, tr, w), regions, map[string][]int{"A": {10}})
			w.Call("dontneed F 2")
			expect(t, "MADV_DONTNEED of a copied file page", dirty(t, tr, w), regions, map[string][]int{"F": {2}})
			// soft-dirty and uffd-wp pause the process for their scans;
			// hash never stops it.
			if h := tr.Held(); name == Hash && h != 0 {
				t.Errorf("Held() = %v for a backend that never stops the process", h)
			}
		})
	}
}

// TestTrackSysV: writes to a System V segment, through the tracked
// process's attachment, are reported exactly (a live migration pre-copies
// segments like shared anonymous memory).
func TestTrackSysV(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			s := workload.Region{Name: "V", Pages: 16}
			ans := w.Call("mapsysv V 16")
			s.Start, _ = strconv.ParseUint(ans, 0, 64)
			w.Call("populate V")
			u := workload.Region{Name: "W", Pages: 8}
			ans = w.Call("mapsysv W 8") // never touched before Start
			u.Start, _ = strconv.ParseUint(ans, 0, 64)
			regions := []workload.Region{s, u}

			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			expect(t, "nothing written", dirty(t, tr, w), regions, nil)
			w.Call("write V 0 3 15")
			w.Call("write W 2")
			expect(t, "first writes", dirty(t, tr, w), regions, map[string][]int{"V": {0, 3, 15}, "W": {2}})
			expect(t, "nothing written again", dirty(t, tr, w), regions, nil)
			w.Call("write V 3")
			expect(t, "a page written again", dirty(t, tr, w), regions, map[string][]int{"V": {3}})
		})
	}
}

// TestTrackLayout: areas mapped, grown, moved or re-protected between
// rounds are reported whole and then exactly; unmapped ones are dropped.
func TestTrackLayout(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			a := w.Map("map", "A", 32, 0)
			w.Call("populate A")
			b := w.Map("map", "B", 16, 0)
			w.Call("populate B")
			c := w.Map("map", "C", 16, 16) // 16 free pages after it, to grow into
			w.Call("populate C")
			d := w.Map("map", "D", 16, 0)
			w.Call("populate D")
			e := w.Map("map", "E", 16, 0)
			w.Call("populate E")

			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			all := []workload.Region{a, b, c, d, e}
			expect(t, "nothing written", dirty(t, tr, w), all, nil)

			// A new area: whole, then exactly.
			g := w.Map("map", "G", 8, 0)
			w.Call("write A 3")
			all = append(all, g)
			expect(t, "new area", dirty(t, tr, w), all, map[string][]int{"A": {3}, "G": seq(0, 8)})
			w.Call("write G 2")
			expect(t, "new area written", dirty(t, tr, w), all, map[string][]int{"G": {2}})

			// Unmapped: nothing there any more.
			w.Call("unmap B")
			rs := dirty(t, tr, w)
			expect(t, "unmapped", rs, all, nil)
			all = slices.DeleteFunc(all, func(r workload.Region) bool { return r.Name == "B" })

			// Grown in place: the new part whole (the old part may be
			// reported too), then exactly.
			if ans := w.Call("grow C 24"); ans != fmt.Sprintf("%#x", c.Start) {
				t.Fatalf("grow moved C to %s", ans)
			}
			c.Pages = 24
			all[slices.IndexFunc(all, func(r workload.Region) bool { return r.Name == "C" })] = c
			rs = dirty(t, tr, w)
			if got := pagesIn(rs, c.Start+16*pg, 8); !slices.Equal(got, seq(0, 8)) {
				t.Errorf("grown: new part of C reported as %s, want all 8 pages", pageList(got))
			}
			expect(t, "grown (elsewhere)", rs, slices.DeleteFunc(slices.Clone(all), func(r workload.Region) bool { return r.Name == "C" }), nil)
			w.Call("write C 20 1")
			expect(t, "grown area written", dirty(t, tr, w), all, map[string][]int{"C": {1, 20}})

			// Moved: the new place whole, the old one not at all.
			old := d
			ans := w.Call("move D")
			d.Start, _ = strconv.ParseUint(ans, 0, 64)
			idx := slices.IndexFunc(all, func(r workload.Region) bool { return r.Name == "D" })
			all[idx] = d
			rs = dirty(t, tr, w)
			expect(t, "moved", rs, all, map[string][]int{"D": seq(0, 16)})
			if got := pagesIn(rs, old.Start, old.Pages); len(got) > 0 {
				t.Errorf("moved: old place of D reported: %s", pageList(got))
			}
			w.Call("write D 4")
			expect(t, "moved area written", dirty(t, tr, w), all, map[string][]int{"D": {4}})

			// Re-protected: whole, twice, then exactly.
			w.Call("protect E r")
			expect(t, "read-only", dirty(t, tr, w), all, map[string][]int{"E": seq(0, 16)})
			w.Call("protect E rw")
			expect(t, "writable again", dirty(t, tr, w), all, map[string][]int{"E": seq(0, 16)})
			w.Call("write E 15")
			expect(t, "re-protected area written", dirty(t, tr, w), all, map[string][]int{"E": {15}})
		})
	}
}

// TestTrackConcurrent: the workload writes all the time while Dirty runs;
// every write must be reported by the first Dirty that starts after it or
// by an earlier one that ended after it, and nothing not written may be
// reported. A last Dirty runs once the writer has stopped.
//
// uffd-wp-steps: the same with uffd-wp's scan in steps of 1 MiB, each
// a pause of its own (a big process's scan, made small): the process runs
// between the steps of one Dirty, and still no write is lost.
func TestTrackConcurrent(t *testing.T) {
	for _, name := range append(backends, "uffd-wp-steps") {
		t.Run(name, func(t *testing.T) {
			steps := name == "uffd-wp-steps"
			if steps {
				name = UffdWP
				oldStep, oldBudget := scanStep, holdBudget
				scanStep, holdBudget = 256*pg, 0
				t.Cleanup(func() { scanStep, holdBudget = oldStep, oldBudget })
			}
			w := workload.Start(t)
			const pages = 1024
			a := w.Map("map", "A", pages, 0)
			w.Call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			type call struct {
				start, end int64
				pages      []int
			}
			calls := []call{{start: workload.MonoNow(), end: workload.MonoNow()}} // Start
			logPath := filepath.Join(t.TempDir(), "writes")
			const writes = 60000
			w.Call("spin A %d %d %s", writes, 20000, logPath) // one write per 20 µs: ~1.2 s

			// spinwait answers once the writer has finished; only this
			// goroutine talks to the workload meanwhile.
			spinRes := w.Go("spinwait")
			var held []time.Duration
			for running := true; running; {
				vmas := workload.Layout(t, w.PID)
				s := workload.MonoNow()
				rs, err := tr.Dirty(vmas)
				e := workload.MonoNow()
				if err != nil {
					t.Fatalf("Dirty while writing: %v", err)
				}
				held = append(held, tr.Held())
				if steps && Longest(tr) >= tr.Held() {
					t.Errorf("Dirty held the process %v, its longest stop %v: one stop, not a stop per step", tr.Held(), Longest(tr))
				}
				calls = append(calls, call{s, e, pagesIn(rs, a.Start, pages)})
				select {
				case line := <-spinRes:
					if !strings.HasPrefix(line, "ok") {
						t.Fatalf("writer: %s", line)
					}
					running = false
				default:
					time.Sleep(15 * time.Millisecond)
				}
			}
			// Quiescent: the writer has stopped.
			s := workload.MonoNow()
			rs := dirty(t, tr, w)
			calls = append(calls, call{s, workload.MonoNow(), pagesIn(rs, a.Start, pages)})

			log := workload.ReadWriteLog(t, logPath)
			if len(log) != writes {
				t.Fatalf("write log has %d writes, want %d", len(log), writes)
			}
			// For each page, the calls that reported it.
			reportedBy := make([][]int, pages)
			for i, c := range calls {
				for _, p := range c.pages {
					reportedBy[p] = append(reportedBy[p], i)
				}
			}
			lost := 0
			for _, wr := range log {
				// First call started after the write was done.
				i := sort.Search(len(calls), func(i int) bool { return calls[i].start > wr.After })
				// First call that ended after the write began.
				j := sort.Search(len(calls), func(i int) bool { return calls[i].end > wr.Before })
				rb := reportedBy[wr.Page]
				k := sort.SearchInts(rb, j)
				if i >= len(calls) || k >= len(rb) || rb[k] > i {
					if lost < 10 {
						t.Errorf("write to page %d at %d not reported by calls %d..%d", wr.Page, wr.Before, j, i)
					}
					lost++
				}
			}
			// Nothing reported that was not written since the previous call
			// started.
			spurious := 0
			byPage := make([][]workload.WriteRec, pages)
			for _, wr := range log {
				byPage[wr.Page] = append(byPage[wr.Page], wr)
			}
			for i := 1; i < len(calls); i++ {
				for _, p := range calls[i].pages {
					ok := false
					for _, wr := range byPage[p] {
						if wr.After > calls[i-1].start && wr.Before < calls[i].end {
							ok = true
							break
						}
					}
					if !ok {
						if spurious < 10 {
							t.Errorf("call %d reported page %d, not written since call %d started", i, p, i-1)
						}
						spurious++
					}
				}
			}
			var reported int
			for _, c := range calls {
				reported += len(c.pages)
			}
			t.Logf("%s: %d writes, %d Dirty calls while writing, %d page reports; lost %d, spurious %d; held %v",
				name, len(log), len(calls)-2, reported, lost, spurious, summarizeHeld(held))
		})
	}
}

func summarizeHeld(h []time.Duration) string {
	if len(h) == 0 {
		return "-"
	}
	s := slices.Clone(h)
	slices.Sort(s)
	return fmt.Sprintf("median %v, max %v", s[len(s)/2], s[len(s)-1])
}

// TestTrackClose: after Close the process has no userfaultfd, no
// registration, no tracer, no extra fd or mapping, and runs on.
func TestTrackClose(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			w.Map("map", "A", 64, 0)
			w.Call("populate A")
			tr := newTestTracker(t, name, w)
			fdsBefore := fdLinks(t, w.PID)
			mapsBefore := mapsText(t, w.PID)
			threadsBefore := threads(t, w.PID)
			startTracking(t, tr, w)
			if name == UffdWP {
				if !hasVmFlag(t, w.PID, "uw") {
					t.Error("no VMA registered for uffd-wp (VmFlags uw) while tracking")
				}
			}
			w.Call("write A 1 2 3")
			dirty(t, tr, w)
			if err := tr.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := tr.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := tr.Dirty(workload.Layout(t, w.PID)); !errors.Is(err, ErrState) {
				t.Errorf("Dirty after Close: %v, want ErrState", err)
			}
			if got := fdLinks(t, w.PID); !slices.Equal(got, fdsBefore) {
				t.Errorf("fds after Close %v, before Start %v", got, fdsBefore)
			}
			for _, l := range fdLinks(t, w.PID) {
				if strings.Contains(l, "userfaultfd") {
					t.Errorf("userfaultfd left in the process: %s", l)
				}
			}
			if hasVmFlag(t, w.PID, "uw") {
				t.Error("a VMA is still registered for uffd-wp (VmFlags uw) after Close")
			}
			if got := mapsText(t, w.PID); got != mapsBefore {
				// The tracker starts no thread; the Go runtime of the
				// workload may, and maps a stack and an arena for it.
				if n := threads(t, w.PID); n != threadsBefore {
					t.Logf("the workload's runtime went from %d to %d threads; mappings changed:\n%s", threadsBefore, n, lineDiff(mapsBefore, got))
				} else if onlyArenas(mapsBefore, got) {
					t.Logf("a thread of the workload's runtime made or grew a malloc arena:\n%s", lineDiff(mapsBefore, got))
				} else {
					t.Errorf("mappings changed:\n%s", lineDiff(mapsBefore, got))
				}
			}
			st, err := proc.ReadStatus(w.PID)
			if err != nil {
				t.Fatal(err)
			}
			if st.TracerPID != 0 {
				t.Errorf("still traced by %d", st.TracerPID)
			}
			if st.State == 'Z' || st.State == 'X' || st.State == 't' || st.State == 'T' {
				t.Errorf("workload state %c after Close", st.State)
			}
			w.Call("write A 4")
			if got := w.Call("ping"); got != "pong" {
				t.Errorf("ping: %q", got)
			}
		})
	}
}

// lineDiff shows the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

func threads(t testing.TB, pid int) int {
	t.Helper()
	tids, err := proc.ReadTIDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	return len(tids)
}

// fdLinks lists "fd -> target" of pid.
func fdLinks(t testing.TB, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+" -> "+l)
	}
	slices.Sort(out)
	return out
}

// arenaSize is the address space of a glibc malloc arena other than the
// main one (HEAP_MAX_SIZE on 64-bit): a reservation of its own size and
// alignment, read-write at the start and PROT_NONE after.
const arenaSize = 64 << 20

// onlyArenas reports whether the maps texts before and after differ only
// in malloc arenas: every line one has and the other lacks lies in an
// arena-aligned block that, after, is exactly an arena (an anonymous
// rw-p mapping from the block's start, then ---p to its end). Under cgo a
// thread of the workload's runtime makes one on its first malloc.
func onlyArenas(before, after string) bool {
	type m struct {
		start, end uint64
		perms      string
		anon       bool
	}
	parse := func(text string) (map[string]m, []m) {
		lines := map[string]m{}
		var all []m
		for l := range strings.Lines(text) {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			var x m
			if _, err := fmt.Sscanf(f[0], "%x-%x", &x.start, &x.end); err != nil {
				continue
			}
			x.perms, x.anon = f[1], len(f) == 5
			lines[strings.TrimSpace(l)] = x
			all = append(all, x)
		}
		return lines, all
	}
	bl, _ := parse(before)
	al, afterAll := parse(after)
	isArena := func(block uint64) bool {
		var in []m
		for _, x := range afterAll {
			if x.start < block+arenaSize && x.end > block {
				in = append(in, x)
			}
		}
		return len(in) == 2 && in[0].anon && in[1].anon &&
			in[0].start == block && in[0].perms == "rw-p" && in[0].end == in[1].start &&
			in[1].perms == "---p" && in[1].end == block+arenaSize
	}
	changed := 0
	for _, diff := range []struct{ a, b map[string]m }{{bl, al}, {al, bl}} {
		for l, x := range diff.a {
			if _, ok := diff.b[l]; ok {
				continue
			}
			changed++
			block := x.start &^ (arenaSize - 1)
			if x.end > block+arenaSize || !isArena(block) {
				return false
			}
		}
	}
	return changed > 0
}

func mapsText(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasVmFlag(t testing.TB, pid int, flag string) bool {
	t.Helper()
	maps, err := proc.ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.HasFlag(flag) {
			return true
		}
	}
	return false
}

// TestTrackAuto: auto picks the best backend this kernel has.
func TestTrackAuto(t *testing.T) {
	w := workload.Start(t)
	tr, err := New(Auto, w.PID)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	want := Hash
	for _, n := range []string{UffdWP, SoftDirty} {
		if o, err := New(n, w.PID); err == nil {
			o.Close()
			want = n
			break
		}
	}
	if tr.Name() != want {
		t.Errorf("auto picked %s, want %s", tr.Name(), want)
	}
	t.Logf("auto picked %s", tr.Name())
	if _, err := New("dirty-bits", w.PID); !errors.As(err, new(*UnknownError)) {
		t.Errorf("unknown name: %v", err)
	}
	if !slices.Equal(Names(), []string{"auto", "uffd-wp", "soft-dirty", "hash"}) {
		t.Errorf("Names() = %v", Names())
	}
}

// TestTrackUffdUserModeOnly: the fallback for a tracee that may not create
// a userfaultfd for kernel faults still sees the kernel's writes.
func TestTrackUffdUserModeOnly(t *testing.T) {
	w := workload.Start(t)
	if _, err := New(UffdWP, w.PID); err != nil {
		skipUnsupported(t, UffdWP, err)
	}
	a := w.Map("map", "A", 16, 0)
	w.Call("populate A")
	u := newUffdTracker(w.PID)
	u.userModeOnly = true
	defer u.Close()
	startTracking(t, u, w)
	w.Call("kwrite A 3")
	w.Call("write A 4")
	expect(t, "user-mode-only userfaultfd", dirty(t, u, w), []workload.Region{a}, map[string][]int{"A": {3, 4}})
}

// TestTrackFrozenDirty: a Dirty while the caller holds the process frozen
// (the final round) works and holds nothing itself.
func TestTrackFrozenDirty(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			a := w.Map("map", "A", 16, 0)
			w.Call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			w.Call("write A 2 9")
			tracer := ptrace.NewTracer()
			defer tracer.Close()
			p, err := tracer.Seize(w.PID)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := tr.Dirty(workload.Layout(t, w.PID))
			if derr := p.Detach(); derr != nil {
				t.Fatal(derr)
			}
			if err != nil {
				t.Fatalf("Dirty while frozen: %v", err)
			}
			expect(t, "frozen", rs, []workload.Region{a}, map[string][]int{"A": {2, 9}})
			if tr.Held() != 0 {
				t.Errorf("Held() = %v while the caller held the process", tr.Held())
			}
		})
	}
}

// TestTrackProcessGone: Dirty on a process that has exited fails (with an
// error matching ESRCH where the kernel says so), and Close still works.
func TestTrackProcessGone(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := workload.Start(t)
			w.Map("map", "A", 16, 0)
			w.Call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			vmas := workload.Layout(t, w.PID)
			w.Kill()
			rs, err := tr.Dirty(vmas)
			if err == nil {
				t.Fatalf("Dirty on a dead process: no error, %d ranges", len(rs))
			}
			t.Logf("Dirty on a dead process: %v (ESRCH: %v)", err, errors.Is(err, unix.ESRCH))
			if err := tr.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

// TestTrackHashSent: with Sent, the hash backend compares with what was
// sent, so a page that changes back to what Dirty read is reported.
func TestTrackHashSent(t *testing.T) {
	w := workload.Start(t)
	a := w.Map("map", "A", 4, 0)
	w.Call("populate A")
	tr := newTestTracker(t, Hash, w)
	startTracking(t, tr, w)
	ct, ok := tr.(ContentTracker)
	if !ok {
		t.Fatal("hash tracker is no ContentTracker")
	}
	w.Call("write A 1")
	expect(t, "written", dirty(t, tr, w), []workload.Region{a}, map[string][]int{"A": {1}})
	// The caller read something else than Dirty saw.
	ct.Sent(a.Start+pg, make([]byte, pg))
	expect(t, "sent differs from memory", dirty(t, tr, w), []workload.Region{a}, map[string][]int{"A": {1}})
	buf := make([]byte, pg)
	if _, err := ptrace.ReadMem(w.PID, a.Start+pg, buf); err != nil {
		t.Fatal(err)
	}
	ct.Sent(a.Start+pg, buf)
	expect(t, "sent equals memory", dirty(t, tr, w), []workload.Region{a}, nil)
}

// TestTrackLayoutPlan checks the layout bookkeeping on made-up layouts.
func TestTrackLayoutPlan(t *testing.T) {
	anon := func(s, e uint64, prot int) core.VMA {
		return core.VMA{Start: s * pg, End: e * pg, Prot: prot, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon, Offset: s * pg}
	}
	rw := unix.PROT_READ | unix.PROT_WRITE
	old := planLayout(nil, []core.VMA{anon(10, 20, rw), anon(30, 40, rw), anon(50, 60, rw),
		{Start: 70 * pg, End: 80 * pg, Kind: core.VMAVDSO}, {Start: 90 * pg, End: 99 * pg, Kind: core.VMASharedFile}}).areas
	if len(old) != 3 {
		t.Fatalf("tracked %d areas, want 3 (no vdso, no shared file)", len(old))
	}
	pl := planLayout(old, []core.VMA{
		anon(10, 25, rw),             // grown: 20-25 fresh
		anon(30, 40, unix.PROT_READ), // re-protected: fresh
		anon(50, 55, rw),             // shrunk: kept
		anon(55, 60, rw),             // split: kept
		anon(100, 101, rw),           // new
		{Start: 5 * pg, End: 6 * pg}, // no kind: not tracked
	})
	r := func(s, e uint64) PageRange { return PageRange{s * pg, e * pg} }
	if want := []PageRange{r(10, 20), r(50, 60)}; !slices.Equal(pl.kept, want) {
		t.Errorf("kept %v, want %v", pl.kept, want)
	}
	if want := []PageRange{r(20, 25), r(30, 40), r(100, 101)}; !slices.Equal(pl.fresh, want) {
		t.Errorf("fresh %v, want %v", pl.fresh, want)
	}
	// The same areas read from maps (the final round's quick read) after
	// smaps (pre-copy): flags only smaps shows do not make them new.
	smaps := anon(200, 210, rw)
	smaps.Flags |= unix.MAP_NORESERVE | unix.MAP_GROWSDOWN
	pl = planLayout(planLayout(nil, []core.VMA{smaps}).areas, []core.VMA{anon(200, 210, rw)})
	if want := []PageRange{r(200, 210)}; !slices.Equal(pl.kept, want) || len(pl.fresh) != 0 {
		t.Errorf("an area read without its smaps flags: kept %v, fresh %v; want all kept", pl.kept, pl.fresh)
	}
	if got, want := subtract([]PageRange{r(0, 10), r(20, 30)}, []PageRange{r(2, 3), r(9, 21), r(25, 26)}), []PageRange{r(0, 2), r(3, 9), r(21, 25), r(26, 30)}; !slices.Equal(got, want) {
		t.Errorf("subtract = %v, want %v", got, want)
	}
	if got, want := intersect([]PageRange{r(0, 10), r(20, 30)}, []PageRange{r(2, 3), r(9, 21), r(25, 40)}), []PageRange{r(2, 3), r(9, 10), r(20, 21), r(25, 30)}; !slices.Equal(got, want) {
		t.Errorf("intersect = %v, want %v", got, want)
	}
	if got, want := normalize([]PageRange{r(5, 6), r(1, 2), r(2, 3), r(5, 7)}), []PageRange{r(1, 3), r(5, 7)}; !slices.Equal(got, want) {
		t.Errorf("normalize = %v, want %v", got, want)
	}
}

// BenchmarkTrackDirty measures one Dirty over a populated region (256 MiB,
// or MIGRATE_TRACK_BENCH_MB) with 1% of its pages written in between, and
// how long it held the process. soft-dirty-stop runs the soft-dirty
// backend's stop on a kernel without soft-dirty, where it reports nothing
// but costs what it costs.
func BenchmarkTrackDirty(b *testing.B) {
	mb := 256
	if s := os.Getenv("MIGRATE_TRACK_BENCH_MB"); s != "" {
		mb, _ = strconv.Atoi(s)
	}
	pages := mb << 20 / pg
	names := append(slices.Clone(backends), "soft-dirty-stop")
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			w := workload.Start(b)
			a := w.Map("map", "A", pages, 0)
			w.Call("populate A")
			var tr Tracker
			if name == "soft-dirty-stop" {
				// What the soft-dirty backend's stop costs (seize, pagemap,
				// clear_refs, detach), on a kernel without soft-dirty,
				// where no bit is ever set: only where the real backend
				// cannot run.
				if _, err := New(SoftDirty, w.PID); err == nil {
					b.Skip("soft-dirty works here: see the soft-dirty benchmark")
				}
				tr = newSoftDirtyTracker(w.PID)
				b.Cleanup(func() { tr.Close() })
			} else {
				tr = newTestTracker(b, name, w)
			}
			startTracking(b, tr, w)
			vmas := workload.Layout(b, w.PID)
			dirty(b, tr, w)
			var held time.Duration
			var reported int
			i := 0
			for b.Loop() {
				b.StopTimer()
				w.Call("writen A %d %d", pages/100, i)
				i++
				b.StartTimer()
				rs, err := tr.Dirty(vmas)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				held += tr.Held()
				reported += len(pagesIn(rs, a.Start, pages))
				b.StartTimer()
			}
			if i > 0 {
				b.ReportMetric(float64(held.Microseconds())/1000/float64(i), "held-ms/op")
				b.ReportMetric(float64(reported)/float64(i), "pages/op")
			}
		})
	}
}

// TestTrackFinalDirty: the uffd-wp backend's FinalDirty (one walk, nothing
// re-armed) reports what Dirty reports, page for page, after writes by the
// process and the kernel, pages dropped (in writable and read-only areas),
// a new area and a re-protected one.
func TestTrackFinalDirty(t *testing.T) {
	type run struct {
		regions []workload.Region
		got     []PageRange
	}
	scenario := func(final bool) run {
		w := workload.Start(t)
		file := filepath.Join(t.TempDir(), "data")
		if err := os.WriteFile(file, []byte(strings.Repeat("x", 8*pg)), 0o644); err != nil {
			t.Fatal(err)
		}
		a := w.Map("map", "A", 64, 0)
		w.Call("populate A")
		s := w.Map("mapshared", "S", 16, 0)
		w.Call("populate S")
		f := workload.Region{Name: "F", Pages: 8}
		ans := w.Call("mapfile F %s 8", file)
		f.Start, _ = strconv.ParseUint(ans, 0, 64)
		w.Call("write F 5")
		r := w.Map("map", "R", 8, 0)
		w.Call("populate R")
		w.Call("protect R r")
		e := w.Map("map", "E", 8, 0)
		w.Call("populate E")
		u := w.Map("map", "U", 16, 0)
		// Shared memory partly populated: uffd-wp leaves pte markers on
		// the rest, which PAGEMAP_SCAN shows as swapped and pagemap
		// tells apart (swappedData).
		pm := w.Map("mapshared", "P", 16, 0)
		w.Call("write P 0 4 5 11")
		// More than one walk of the final scan (scanChunk), written on
		// both sides of where the first ends.
		big := w.Map("map", "B", scanChunk/trackPage+52, 0)
		w.Call("populate B")
		tr := newTestTracker(t, UffdWP, w)
		startTracking(t, tr, w)
		dirty(t, tr, w) // a first round

		w.Call("write A 1 5 63")
		w.Call("write S 3")
		w.Call("write F 2")
		w.Call("kwrite U 1")
		w.Call("dontneed A 9")
		w.Call("dontneed F 5")
		w.Call("dontneed R 2")
		w.Call("protect E r")
		w.Call("write B 0 %d %d %d", scanChunk/trackPage-1, scanChunk/trackPage, scanChunk/trackPage+51)
		w.Call("write P 7")
		w.Call("dontneed P 4")
		g := w.Map("map", "G", 4, 0)
		regions := []workload.Region{a, s, f, r, e, u, g, big, pm}
		if !final {
			return run{regions, dirty(t, tr, w)}
		}
		ft, ok := tr.(FinalTracker)
		if !ok {
			t.Fatalf("the %s tracker has no FinalDirty", tr.Name())
		}
		rs, err := ft.FinalDirty(workload.Layout(t, w.PID))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Dirty(workload.Layout(t, w.PID)); !errors.Is(err, ErrState) {
			t.Errorf("Dirty after FinalDirty: %v, want ErrState", err)
		}
		return run{regions, rs}
	}
	want := scenario(false)
	got := scenario(true)
	for i, wr := range want.regions {
		gr := got.regions[i]
		w, g := pagesIn(want.got, wr.Start, wr.Pages), pagesIn(got.got, gr.Start, gr.Pages)
		if !slices.Equal(w, g) {
			t.Errorf("region %s: FinalDirty reported %s, Dirty %s", wr.Name, pageList(g), pageList(w))
		}
	}
	expect(t, "FinalDirty", got.got, got.regions, map[string][]int{
		"A": {1, 5, 9, 63}, "S": {3}, "F": {2, 5}, "R": {2}, "E": seq(0, 8), "U": {1}, "G": seq(0, 4),
		"B": {0, scanChunk/trackPage - 1, scanChunk / trackPage, scanChunk/trackPage + 51},
		"P": {4, 7},
	})
}

// TestOnlyArenas: TestTrackClose tells a malloc arena the workload's
// runtime made (seen on a loaded machine) from a mapping left behind.
func TestOnlyArenas(t *testing.T) {
	const base = "55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /bin/x\n" +
		"7f70f0000000-7f70f0021000 rw-p 00000000 00:00 0 \n" +
		"7f70f0021000-7f70f4000000 ---p 00000000 00:00 0 \n"
	arena := "7f7100000000-7f7100021000 rw-p 00000000 00:00 0 \n" +
		"7f7100021000-7f7104000000 ---p 00000000 00:00 0 \n"
	grown := strings.Replace(strings.Replace(base, "7f70f0000000-7f70f0021000", "7f70f0000000-7f70f0042000", 1),
		"7f70f0021000-7f70f4000000", "7f70f0042000-7f70f4000000", 1)
	for _, c := range []struct {
		name, after string
		want        bool
	}{
		{"same", base, false},
		{"new arena", base + arena, true},
		{"arena grown", grown, true},
		{"a page left", base + "7f7200000000-7f7200001000 rw-p 00000000 00:00 0 \n", false},
		{"a page in an arena's block", base + "7f7100000000-7f7100001000 rw-p 00000000 00:00 0 \n", false},
		{"a file mapping", base + "7f7100000000-7f7100021000 rw-p 00000000 08:01 9 /tmp/f\n7f7100021000-7f7104000000 ---p 00000000 00:00 0 \n", false},
	} {
		if got := onlyArenas(base, c.after); got != c.want {
			t.Errorf("%s: onlyArenas = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestTrackFrozenInjecting: a caller that holds the process frozen and
// injects a system call into it (the thread runs the call, out of any
// ptrace stop) has the final scan use its stop once it said so (Frozen);
// without that, the tracker refuses a process this process traces with a
// thread running.
func TestTrackFrozenInjecting(t *testing.T) {
	for _, said := range []bool{false, true} {
		t.Run(fmt.Sprint("frozen=", said), func(t *testing.T) {
			w := workload.Start(t)
			a := w.Map("map", "A", 16, 0)
			w.Call("populate A")
			tr := newTestTracker(t, UffdWP, w)
			startTracking(t, tr, w)
			w.Call("write A 2 9")
			tracer := ptrace.NewTracer()
			defer tracer.Close()
			p, err := tracer.Seize(w.PID)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Detach()
			if err := p.FindGadget(); err != nil {
				t.Fatal(err)
			}
			if said {
				Frozen(tr)
			}
			// poll(NULL, 0, 2000): the leader sleeps in the injected call.
			done := make(chan error, 1)
			go func() {
				_, err := p.Syscall(p.Leader(), "poll", unix.SYS_POLL, 0, 0, 2000)
				done <- err
			}()
			if !testutil.Poll(time.Second, func() bool {
				st, err := proc.ThreadState(w.PID, w.PID)
				return err == nil && st == 'S'
			}) {
				t.Fatal("the injected poll never slept")
			}
			rs, err := tr.(FinalTracker).FinalDirty(workload.Layout(t, w.PID))
			if err := <-done; err != nil {
				t.Fatalf("injected poll: %v", err)
			}
			if !said {
				if err == nil {
					t.Fatal("FinalDirty with a thread running an injected call, not told the caller holds the process: no error")
				}
				t.Logf("not told: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("FinalDirty with a thread running an injected call: %v", err)
			}
			expect(t, "frozen, injecting", rs, []workload.Region{a}, map[string][]int{"A": {2, 9}})
		})
	}
}
