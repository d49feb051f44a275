package source

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// The tracker tests run the test binary itself as the tracked process (the
// os/exec helper-process trick): with trackWorkloadEnv set, init below
// turns it into a workload that maps, writes, moves and unmaps memory on
// command. The Go runtime writes its own memory all the time, so every
// check looks only at the regions the workload mapped for the test.
//
// Protocol: one command per line on the workload's stdin, one answer line
// on its stdout, "ok ..." or "err ...". Regions have names; page numbers
// are relative to the region's start.

const (
	trackWorkloadEnv = "MIGRATE_TRACK_WORKLOAD"
	// requireSoftDirtyEnv=1 turns the soft-dirty tests' skip into a
	// failure: set by the VM test, whose kernel has soft-dirty.
	requireSoftDirtyEnv = "MIGRATE_REQUIRE_SOFTDIRTY"
	// requireUffdEnv=1 does the same for uffd-wp.
	requireUffdEnv = "MIGRATE_REQUIRE_UFFDWP"
)

func init() {
	if os.Getenv(trackWorkloadEnv) == "1" {
		os.Exit(workloadMain(os.Stdin, os.Stdout))
	}
}

// --- the workload ---------------------------------------------------------

type wlRegion struct {
	addr  uintptr
	pages int
}

type workloadState struct {
	regions map[string]*wlRegion
	seq     uint64 // value of the last write; every write stores a new one

	spinMu   sync.Mutex
	spinDone chan struct{}
	spinErr  error
}

func workloadMain(in io.Reader, out io.Writer) int {
	// Start the OS threads the runtime will want now: goroutines blocked
	// in system calls at once each hold one. Later, while a test compares
	// the mappings, the runtime then has no reason to start a thread
	// (with its stack and, under cgo, a malloc arena).
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := unix.Timespec{Nsec: 20e6}
			unix.Nanosleep(&ts, nil)
		}()
	}
	wg.Wait()
	w := &workloadState{regions: map[string]*wlRegion{}}
	sc := bufio.NewScanner(in)
	bw := bufio.NewWriter(out)
	fmt.Fprintln(bw, "ok ready")
	bw.Flush()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		ans, err := w.do(f)
		if err != nil {
			fmt.Fprintf(bw, "err %v\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Fprintf(bw, "ok %s\n", ans)
		}
		bw.Flush()
	}
	return 0
}

func mmapRaw(addr, length uintptr, prot, flags int, fd int) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_MMAP, addr, length, uintptr(prot), uintptr(flags), uintptr(fd), 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

func syscallErr(_ uintptr, _ uintptr, e syscall.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

const pg = trackPage

// reserveGuarded maps pages+gap+2 pages PROT_NONE and returns where the
// region proper starts: one guard page before it, then the region, gap
// pages to grow into, and a guard page. Guards keep the region from
// merging with its neighbours; the gap stays reserved until the region
// grows, so that nothing else is mapped there meanwhile.
func reserveGuarded(pages, gap int) (uintptr, error) {
	total := uintptr(pages+gap+2) * pg
	base, err := mmapRaw(0, total, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE, -1)
	if err != nil {
		return 0, err
	}
	return base + pg, nil
}

func (w *workloadState) region(name string) (*wlRegion, error) {
	r := w.regions[name]
	if r == nil {
		return nil, fmt.Errorf("no region %q", name)
	}
	return r, nil
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(fmt.Sprintf("bad number %q", s))
	}
	return n
}

func (w *workloadState) write(r *wlRegion, page int) error {
	if page < 0 || page >= r.pages {
		return fmt.Errorf("page %d out of region of %d pages", page, r.pages)
	}
	w.seq++
	binary.LittleEndian.PutUint64(raw.Mem(uint64(r.addr+uintptr(page)*pg+8), 8), w.seq)
	return nil
}

func (w *workloadState) do(f []string) (string, error) {
	w.spinMu.Lock()
	spinning := w.spinDone != nil
	w.spinMu.Unlock()
	if spinning && f[0] != "spinwait" && f[0] != "ping" {
		return "", errors.New("writer running")
	}
	switch f[0] {
	case "ping":
		return "pong", nil
	case "map", "mapshared": // map NAME PAGES [GAP]
		pages, gap := atoi(f[2]), 0
		if len(f) > 3 {
			gap = atoi(f[3])
		}
		at, err := reserveGuarded(pages, gap)
		if err != nil {
			return "", err
		}
		flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_FIXED
		if f[0] == "mapshared" {
			flags = unix.MAP_SHARED | unix.MAP_ANONYMOUS | unix.MAP_FIXED
		}
		if _, err := mmapRaw(at, uintptr(pages)*pg, unix.PROT_READ|unix.PROT_WRITE, flags, -1); err != nil {
			return "", err
		}
		w.regions[f[1]] = &wlRegion{addr: at, pages: pages}
		return fmt.Sprintf("%#x", at), nil
	case "mapfile": // mapfile NAME PATH PAGES: private, writable
		pages := atoi(f[3])
		fd, err := unix.Open(f[2], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		defer unix.Close(fd)
		at, err := reserveGuarded(pages, 0)
		if err != nil {
			return "", err
		}
		if _, err := mmapRaw(at, uintptr(pages)*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED, fd); err != nil {
			return "", err
		}
		w.regions[f[1]] = &wlRegion{addr: at, pages: pages}
		return fmt.Sprintf("%#x", at), nil
	case "populate": // populate NAME: write every page
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		for p := range r.pages {
			w.write(r, p)
		}
		return "", nil
	case "readall", "read": // read NAME PAGE...: read without writing
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		var sum byte
		pages := f[2:]
		if f[0] == "readall" {
			pages = nil
			for p := range r.pages {
				pages = append(pages, strconv.Itoa(p))
			}
		}
		for _, s := range pages {
			sum += raw.Mem(uint64(r.addr+uintptr(atoi(s))*pg), 1)[0]
		}
		return strconv.Itoa(int(sum)), nil
	case "write": // write NAME PAGE...
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		for _, s := range f[2:] {
			if err := w.write(r, atoi(s)); err != nil {
				return "", err
			}
		}
		return "", nil
	case "writen": // writen NAME COUNT SEED: COUNT distinct random pages
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		rng := rand.New(rand.NewPCG(uint64(atoi(f[3])), 1))
		for _, p := range rng.Perm(r.pages)[:atoi(f[2])] {
			w.write(r, p)
		}
		return "", nil
	case "kwrite": // kwrite NAME PAGE: the kernel writes the page (read(2) from a pipe)
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return "", err
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		w.seq++
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], w.seq)
		if _, err := unix.Write(p[1], b[:]); err != nil {
			return "", err
		}
		addr := r.addr + uintptr(atoi(f[2]))*pg + 16
		if err := syscallErr(unix.Syscall(unix.SYS_READ, uintptr(p[0]), addr, 8)); err != nil {
			return "", err
		}
		return "", nil
	case "dontneed": // dontneed NAME PAGE
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		return "", syscallErr(unix.Syscall(unix.SYS_MADVISE, r.addr+uintptr(atoi(f[2]))*pg, pg, unix.MADV_DONTNEED))
	case "unmap": // unmap NAME
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		delete(w.regions, f[1])
		return "", syscallErr(unix.Syscall(unix.SYS_MUNMAP, r.addr, uintptr(r.pages)*pg, 0))
	case "grow": // grow NAME PAGES: in place
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		n := atoi(f[2])
		// Free the reserved gap, then grow into it at once.
		end := r.addr + uintptr(r.pages)*pg
		if err := syscallErr(unix.Syscall(unix.SYS_MUNMAP, end, uintptr(n-r.pages)*pg, 0)); err != nil {
			return "", err
		}
		at, _, e := unix.Syscall6(unix.SYS_MREMAP, r.addr, uintptr(r.pages)*pg, uintptr(n)*pg, 0, 0, 0)
		if e != 0 {
			return "", e
		}
		r.addr, r.pages = at, n
		return fmt.Sprintf("%#x", at), nil
	case "move": // move NAME: mremap to a new place
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		to, err := reserveGuarded(r.pages, 0)
		if err != nil {
			return "", err
		}
		at, _, e := unix.Syscall6(unix.SYS_MREMAP, r.addr, uintptr(r.pages)*pg, uintptr(r.pages)*pg,
			unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, to, 0)
		if e != 0 {
			return "", e
		}
		r.addr = at
		return fmt.Sprintf("%#x", at), nil
	case "protect": // protect NAME r|rw
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		prot := unix.PROT_READ
		if f[2] == "rw" {
			prot |= unix.PROT_WRITE
		}
		return "", syscallErr(unix.Syscall(unix.SYS_MPROTECT, r.addr, uintptr(r.pages)*pg, uintptr(prot)))
	case "spin": // spin NAME WRITES INTERVAL_NS LOGPATH: write in the background
		r, err := w.region(f[1])
		if err != nil {
			return "", err
		}
		n, every, path := atoi(f[2]), int64(atoi(f[3])), f[4]
		done := make(chan struct{})
		w.spinMu.Lock()
		w.spinDone, w.spinErr = done, nil
		w.spinMu.Unlock()
		go func() {
			err := w.spin(r, n, every, path)
			w.spinMu.Lock()
			w.spinErr = err
			w.spinMu.Unlock()
			close(done)
		}()
		return "", nil
	case "spinwait":
		w.spinMu.Lock()
		done := w.spinDone
		w.spinMu.Unlock()
		if done == nil {
			return "", errors.New("no writer")
		}
		<-done
		w.spinMu.Lock()
		err := w.spinErr
		w.spinDone = nil
		w.spinMu.Unlock()
		return "", err
	}
	return "", fmt.Errorf("unknown command %q", f[0])
}

// writeRec is one write of the background writer: the page, and the
// CLOCK_MONOTONIC times just before and just after the store.
type writeRec struct {
	Page          uint32
	Before, After int64
}

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// spin writes n times to random pages of r, one write every `every`
// nanoseconds at most, each storing a new value, and logs every write.
func (w *workloadState) spin(r *wlRegion, n int, every int64, path string) error {
	log := make([]writeRec, 0, n)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(every)))
	seq := w.seq
	next := monoNow()
	for range n {
		for monoNow() < next {
		}
		page := rng.IntN(r.pages)
		seq++
		before := monoNow()
		binary.LittleEndian.PutUint64(raw.Mem(uint64(r.addr+uintptr(page)*pg+8), 8), seq)
		log = append(log, writeRec{uint32(page), before, monoNow()})
		next = before + every
	}
	w.seq = seq
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	if err := binary.Write(bw, binary.LittleEndian, log); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// --- the test side --------------------------------------------------------

type workload struct {
	t   testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	pid int
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, pidfd_getfd, /proc/PID/pagemap)")
	}
}

// startWorkload starts the test binary as a workload child; it is killed
// and reaped at the end of the test.
func startWorkload(t testing.TB) *workload {
	t.Helper()
	needRoot(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), trackWorkloadEnv+"=1")
	cmd.Stderr = os.Stderr
	// No Pdeathsig: it fires when the OS thread that forked the child
	// exits, and a Go thread exits whenever a goroutine locked to it
	// ends, which every ptrace.Tracer does on Close. The workload exits
	// on EOF of its stdin instead, when this process goes away.
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &workload{t: t, cmd: cmd, in: in, out: bufio.NewReader(out), pid: cmd.Process.Pid}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, err := w.out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "ok") {
		t.Fatalf("workload did not start: %q %v", line, err)
	}
	return w
}

// call sends a command and returns the answer after "ok".
func (w *workload) call(format string, args ...any) string {
	w.t.Helper()
	cmd := fmt.Sprintf(format, args...)
	if _, err := io.WriteString(w.in, cmd+"\n"); err != nil {
		w.t.Fatalf("workload %s: %v", cmd, err)
	}
	line, err := w.out.ReadString('\n')
	if err != nil {
		w.t.Fatalf("workload %s: %v", cmd, err)
	}
	line = strings.TrimSuffix(line, "\n")
	ans, ok := strings.CutPrefix(line, "ok")
	if !ok {
		w.t.Fatalf("workload %s: %s", cmd, line)
	}
	return strings.TrimSpace(ans)
}

// region is a region of the workload as the test sees it.
type region struct {
	name  string
	start uint64
	pages int
}

func (r region) end() uint64 { return r.start + uint64(r.pages)*pg }

func (w *workload) mapRegion(kind, name string, pages, gap int) region {
	w.t.Helper()
	ans := w.call("%s %s %d %d", kind, name, pages, gap)
	at, err := strconv.ParseUint(ans, 0, 64)
	if err != nil {
		w.t.Fatalf("map answer %q", ans)
	}
	return region{name, at, pages}
}

// layout reads the workload's layout as the dumper does.
func layout(t testing.TB, pid int) []core.VMA {
	t.Helper()
	maps, err := proc.ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var out []core.VMA
	for _, m := range maps {
		v := core.VMA{Start: m.Start, End: m.End, Prot: m.Prot, Offset: m.Offset, Flags: unix.MAP_PRIVATE, Name: m.Path}
		if m.Shared {
			v.Flags = unix.MAP_SHARED
		}
		switch {
		case m.Path == "[vsyscall]":
			continue
		case m.Path == "[vdso]":
			v.Kind = core.VMAVDSO
		case m.IsSpecial():
			v.Kind = core.VMAVVar
		case m.IsAnonShared() || strings.HasPrefix(m.Path, "[anon_shmem:"):
			v.Kind = core.VMASharedAnon
		case m.Path == "" || strings.HasPrefix(m.Path, "["):
			v.Kind = core.VMAAnon
			if m.Shared {
				v.Kind = core.VMASharedAnon
			}
		default:
			v.Kind = core.VMAFile
			if m.Shared {
				v.Kind = core.VMASharedFile
			}
			v.File = &core.FileRef{Path: m.Path, Ino: m.Inode, Dev: uint64(m.Major)<<8 | uint64(m.Minor)}
		}
		out = append(out, v)
	}
	return out
}

// skipUnsupported skips a test whose backend this kernel lacks, naming
// what is missing, unless the environment says the backend must be there.
func skipUnsupported(t testing.TB, name string, err error) {
	t.Helper()
	var uts unix.Utsname
	unix.Uname(&uts)
	rel := unix.ByteSliceToString(uts.Release[:])
	must := (name == TrackerSoftDirty && os.Getenv(requireSoftDirtyEnv) == "1") ||
		(name == TrackerUffdWP && os.Getenv(requireUffdEnv) == "1")
	if must {
		t.Fatalf("%s tracker required here but not supported on kernel %s: %v", name, rel, err)
	}
	t.Skipf("%s tracker not supported on kernel %s: %v", name, rel, err)
}

// newTestTracker makes a tracker of the named backend for w, or skips.
func newTestTracker(t testing.TB, name string, w *workload) Tracker {
	t.Helper()
	tr, err := NewTracker(name, w.pid)
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
// does.
func startTracking(t testing.TB, tr Tracker, w *workload) {
	t.Helper()
	tracer := ptrace.NewTracer()
	defer tracer.Close()
	p, err := tracer.Seize(w.pid)
	if err != nil {
		t.Fatal(err)
	}
	err = tr.Start(p, layout(t, w.pid))
	if derr := p.Detach(); derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Fatalf("%s Start: %v", tr.Name(), err)
	}
}

func dirty(t testing.TB, tr Tracker, w *workload) []PageRange {
	t.Helper()
	rs, err := tr.Dirty(layout(t, w.pid))
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
func expect(t testing.TB, step string, rs []PageRange, regions []region, want map[string][]int) {
	t.Helper()
	for _, r := range regions {
		got := pagesIn(rs, r.start, r.pages)
		w := want[r.name]
		if !slices.Equal(got, w) {
			t.Errorf("%s: region %s (%d pages at %#x): reported pages %s, want %s", step, r.name, r.pages, r.start, pageList(got), pageList(w))
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

var backends = []string{TrackerUffdWP, TrackerSoftDirty, TrackerHash}

// TestTrackExact: writes between rounds are reported exactly, in private,
// shared and private file memory, by the process and by the kernel, and
// pages that lose their data are reported too.
func TestTrackExact(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := startWorkload(t)
			file := filepath.Join(t.TempDir(), "data")
			if err := os.WriteFile(file, []byte(strings.Repeat("x", 8*pg)), 0o644); err != nil {
				t.Fatal(err)
			}
			a := w.mapRegion("map", "A", 64, 0)
			w.call("populate A")
			s := w.mapRegion("mapshared", "S", 16, 0)
			w.call("populate S")
			f := region{"F", 0, 8}
			ans := w.call("mapfile F %s 8", file)
			f.start, _ = strconv.ParseUint(ans, 0, 64)
			w.call("readall F")
			u := w.mapRegion("map", "U", 16, 0) // never touched before Start
			regions := []region{a, s, f, u}

			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			if tr.Name() != name {
				t.Fatalf("Name() = %q, want %q", tr.Name(), name)
			}

			expect(t, "nothing written", dirty(t, tr, w), regions, nil)

			w.call("write A 1 5 6 63")
			w.call("write S 3")
			w.call("write F 2")
			w.call("write U 7")
			expect(t, "first writes", dirty(t, tr, w), regions, map[string][]int{"A": {1, 5, 6, 63}, "S": {3}, "F": {2}, "U": {7}})

			w.call("write A 5")
			w.call("write A 5")
			expect(t, "a page written twice", dirty(t, tr, w), regions, map[string][]int{"A": {5}})

			expect(t, "nothing written again", dirty(t, tr, w), regions, nil)

			w.call("kwrite A 7")
			w.call("kwrite U 1")
			expect(t, "written by the kernel", dirty(t, tr, w), regions, map[string][]int{"A": {7}, "U": {1}})

			w.call("dontneed A 9")
			expect(t, "MADV_DONTNEED", dirty(t, tr, w), regions, map[string][]int{"A": {9}})
			w.call("read A 9")
			expect(t, "zero page read back", dirty(t, tr, w), regions, nil)
			w.call("dontneed A 10")
			w.call("read A 10")
			expect(t, "MADV_DONTNEED then read", dirty(t, tr, w), regions, map[string][]int{"A": {10}})
			w.call("dontneed F 2")
			expect(t, "MADV_DONTNEED of a copied file page", dirty(t, tr, w), regions, map[string][]int{"F": {2}})
			// soft-dirty and uffd-wp pause the process for their scans;
			// hash never stops it.
			if h := tr.Held(); name == TrackerHash && h != 0 {
				t.Errorf("Held() = %v for a backend that never stops the process", h)
			}
		})
	}
}

// TestTrackLayout: areas mapped, grown, moved or re-protected between
// rounds are reported whole and then exactly; unmapped ones are dropped.
func TestTrackLayout(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := startWorkload(t)
			a := w.mapRegion("map", "A", 32, 0)
			w.call("populate A")
			b := w.mapRegion("map", "B", 16, 0)
			w.call("populate B")
			c := w.mapRegion("map", "C", 16, 16) // 16 free pages after it, to grow into
			w.call("populate C")
			d := w.mapRegion("map", "D", 16, 0)
			w.call("populate D")
			e := w.mapRegion("map", "E", 16, 0)
			w.call("populate E")

			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			all := []region{a, b, c, d, e}
			expect(t, "nothing written", dirty(t, tr, w), all, nil)

			// A new area: whole, then exactly.
			g := w.mapRegion("map", "G", 8, 0)
			w.call("write A 3")
			all = append(all, g)
			expect(t, "new area", dirty(t, tr, w), all, map[string][]int{"A": {3}, "G": seq(0, 8)})
			w.call("write G 2")
			expect(t, "new area written", dirty(t, tr, w), all, map[string][]int{"G": {2}})

			// Unmapped: nothing there any more.
			w.call("unmap B")
			rs := dirty(t, tr, w)
			expect(t, "unmapped", rs, all, nil)
			all = slices.DeleteFunc(all, func(r region) bool { return r.name == "B" })

			// Grown in place: the new part whole (the old part may be
			// reported too), then exactly.
			if ans := w.call("grow C 24"); ans != fmt.Sprintf("%#x", c.start) {
				t.Fatalf("grow moved C to %s", ans)
			}
			c.pages = 24
			all[slices.IndexFunc(all, func(r region) bool { return r.name == "C" })] = c
			rs = dirty(t, tr, w)
			if got := pagesIn(rs, c.start+16*pg, 8); !slices.Equal(got, seq(0, 8)) {
				t.Errorf("grown: new part of C reported as %s, want all 8 pages", pageList(got))
			}
			expect(t, "grown (elsewhere)", rs, slices.DeleteFunc(slices.Clone(all), func(r region) bool { return r.name == "C" }), nil)
			w.call("write C 20 1")
			expect(t, "grown area written", dirty(t, tr, w), all, map[string][]int{"C": {1, 20}})

			// Moved: the new place whole, the old one not at all.
			old := d
			ans := w.call("move D")
			d.start, _ = strconv.ParseUint(ans, 0, 64)
			idx := slices.IndexFunc(all, func(r region) bool { return r.name == "D" })
			all[idx] = d
			rs = dirty(t, tr, w)
			expect(t, "moved", rs, all, map[string][]int{"D": seq(0, 16)})
			if got := pagesIn(rs, old.start, old.pages); len(got) > 0 {
				t.Errorf("moved: old place of D reported: %s", pageList(got))
			}
			w.call("write D 4")
			expect(t, "moved area written", dirty(t, tr, w), all, map[string][]int{"D": {4}})

			// Re-protected: whole, twice, then exactly.
			w.call("protect E r")
			expect(t, "read-only", dirty(t, tr, w), all, map[string][]int{"E": seq(0, 16)})
			w.call("protect E rw")
			expect(t, "writable again", dirty(t, tr, w), all, map[string][]int{"E": seq(0, 16)})
			w.call("write E 15")
			expect(t, "re-protected area written", dirty(t, tr, w), all, map[string][]int{"E": {15}})
		})
	}
}

// TestTrackConcurrent: the workload writes all the time while Dirty runs;
// every write must be reported by the first Dirty that starts after it or
// by an earlier one that ended after it, and nothing not written may be
// reported. A last Dirty runs once the writer has stopped.
func TestTrackConcurrent(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := startWorkload(t)
			const pages = 1024
			a := w.mapRegion("map", "A", pages, 0)
			w.call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			type call struct {
				start, end int64
				pages      []int
			}
			calls := []call{{start: monoNow(), end: monoNow()}} // Start
			logPath := filepath.Join(t.TempDir(), "writes")
			const writes = 60000
			w.call("spin A %d %d %s", writes, 20000, logPath) // one write per 20 µs: ~1.2 s

			// spinwait answers once the writer has finished; only this
			// goroutine talks to the workload meanwhile.
			spinRes := make(chan string, 1)
			go func() {
				io.WriteString(w.in, "spinwait\n")
				line, err := w.out.ReadString('\n')
				if err != nil {
					line = "err " + err.Error()
				}
				spinRes <- strings.TrimSuffix(line, "\n")
			}()
			var held []time.Duration
			for running := true; running; {
				vmas := layout(t, w.pid)
				s := monoNow()
				rs, err := tr.Dirty(vmas)
				e := monoNow()
				if err != nil {
					t.Fatalf("Dirty while writing: %v", err)
				}
				held = append(held, tr.Held())
				calls = append(calls, call{s, e, pagesIn(rs, a.start, pages)})
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
			s := monoNow()
			rs := dirty(t, tr, w)
			calls = append(calls, call{s, monoNow(), pagesIn(rs, a.start, pages)})

			log := readWriteLog(t, logPath)
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
			byPage := make([][]writeRec, pages)
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

func readWriteLog(t testing.TB, path string) []writeRec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]writeRec, len(b)/20)
	if err := binary.Read(strings.NewReader(string(b)), binary.LittleEndian, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTrackClose: after Close the process has no userfaultfd, no
// registration, no tracer, no extra fd or mapping, and runs on.
func TestTrackClose(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := startWorkload(t)
			w.mapRegion("map", "A", 64, 0)
			w.call("populate A")
			tr := newTestTracker(t, name, w)
			fdsBefore := fdLinks(t, w.pid)
			mapsBefore := mapsText(t, w.pid)
			threadsBefore := threads(t, w.pid)
			startTracking(t, tr, w)
			if name == TrackerUffdWP {
				if !hasVmFlag(t, w.pid, "uw") {
					t.Error("no VMA registered for uffd-wp (VmFlags uw) while tracking")
				}
			}
			w.call("write A 1 2 3")
			dirty(t, tr, w)
			if err := tr.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := tr.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := tr.Dirty(layout(t, w.pid)); !errors.Is(err, ErrTrackerState) {
				t.Errorf("Dirty after Close: %v, want ErrTrackerState", err)
			}
			if got := fdLinks(t, w.pid); !slices.Equal(got, fdsBefore) {
				t.Errorf("fds after Close %v, before Start %v", got, fdsBefore)
			}
			for _, l := range fdLinks(t, w.pid) {
				if strings.Contains(l, "userfaultfd") {
					t.Errorf("userfaultfd left in the process: %s", l)
				}
			}
			if hasVmFlag(t, w.pid, "uw") {
				t.Error("a VMA is still registered for uffd-wp (VmFlags uw) after Close")
			}
			if got := mapsText(t, w.pid); got != mapsBefore {
				// The tracker starts no thread; the Go runtime of the
				// workload may, and maps a stack and an arena for it.
				if n := threads(t, w.pid); n != threadsBefore {
					t.Logf("the workload's runtime went from %d to %d threads; mappings changed:\n%s", threadsBefore, n, lineDiff(mapsBefore, got))
				} else {
					t.Errorf("mappings changed:\n%s", lineDiff(mapsBefore, got))
				}
			}
			st, err := proc.ReadStatus(w.pid)
			if err != nil {
				t.Fatal(err)
			}
			if st.TracerPID != 0 {
				t.Errorf("still traced by %d", st.TracerPID)
			}
			if st.State == 'Z' || st.State == 'X' || st.State == 't' || st.State == 'T' {
				t.Errorf("workload state %c after Close", st.State)
			}
			w.call("write A 4")
			if got := w.call("ping"); got != "pong" {
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
	w := startWorkload(t)
	tr, err := NewTracker(TrackerAuto, w.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	want := TrackerHash
	for _, n := range []string{TrackerUffdWP, TrackerSoftDirty} {
		if o, err := NewTracker(n, w.pid); err == nil {
			o.Close()
			want = n
			break
		}
	}
	if tr.Name() != want {
		t.Errorf("auto picked %s, want %s", tr.Name(), want)
	}
	t.Logf("auto picked %s", tr.Name())
	if _, err := NewTracker("dirty-bits", w.pid); !errors.As(err, new(*UnknownTrackerError)) {
		t.Errorf("unknown name: %v", err)
	}
	if !slices.Equal(TrackerNames(), []string{"auto", "uffd-wp", "soft-dirty", "hash"}) {
		t.Errorf("TrackerNames() = %v", TrackerNames())
	}
}

// TestTrackUffdUserModeOnly: the fallback for a tracee that may not create
// a userfaultfd for kernel faults still sees the kernel's writes.
func TestTrackUffdUserModeOnly(t *testing.T) {
	w := startWorkload(t)
	if _, err := NewTracker(TrackerUffdWP, w.pid); err != nil {
		skipUnsupported(t, TrackerUffdWP, err)
	}
	a := w.mapRegion("map", "A", 16, 0)
	w.call("populate A")
	u := newUffdTracker(w.pid)
	u.userModeOnly = true
	defer u.Close()
	startTracking(t, u, w)
	w.call("kwrite A 3")
	w.call("write A 4")
	expect(t, "user-mode-only userfaultfd", dirty(t, u, w), []region{a}, map[string][]int{"A": {3, 4}})
}

// TestTrackFrozenDirty: a Dirty while the caller holds the process frozen
// (the final round) works and holds nothing itself.
func TestTrackFrozenDirty(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			w := startWorkload(t)
			a := w.mapRegion("map", "A", 16, 0)
			w.call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			w.call("write A 2 9")
			tracer := ptrace.NewTracer()
			defer tracer.Close()
			p, err := tracer.Seize(w.pid)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := tr.Dirty(layout(t, w.pid))
			if derr := p.Detach(); derr != nil {
				t.Fatal(derr)
			}
			if err != nil {
				t.Fatalf("Dirty while frozen: %v", err)
			}
			expect(t, "frozen", rs, []region{a}, map[string][]int{"A": {2, 9}})
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
			w := startWorkload(t)
			w.mapRegion("map", "A", 16, 0)
			w.call("populate A")
			tr := newTestTracker(t, name, w)
			startTracking(t, tr, w)
			vmas := layout(t, w.pid)
			w.cmd.Process.Kill()
			w.cmd.Wait()
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
	w := startWorkload(t)
	a := w.mapRegion("map", "A", 4, 0)
	w.call("populate A")
	tr := newTestTracker(t, TrackerHash, w)
	startTracking(t, tr, w)
	ct, ok := tr.(ContentTracker)
	if !ok {
		t.Fatal("hash tracker is no ContentTracker")
	}
	w.call("write A 1")
	expect(t, "written", dirty(t, tr, w), []region{a}, map[string][]int{"A": {1}})
	// The caller read something else than Dirty saw.
	ct.Sent(a.start+pg, make([]byte, pg))
	expect(t, "sent differs from memory", dirty(t, tr, w), []region{a}, map[string][]int{"A": {1}})
	buf := make([]byte, pg)
	if _, err := ptrace.ReadMem(w.pid, a.start+pg, buf); err != nil {
		t.Fatal(err)
	}
	ct.Sent(a.start+pg, buf)
	expect(t, "sent equals memory", dirty(t, tr, w), []region{a}, nil)
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
		mb = atoi(s)
	}
	pages := mb << 20 / pg
	names := append(slices.Clone(backends), "soft-dirty-stop")
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			w := startWorkload(b)
			a := w.mapRegion("map", "A", pages, 0)
			w.call("populate A")
			var tr Tracker
			if name == "soft-dirty-stop" {
				// What the soft-dirty backend's stop costs (seize, pagemap,
				// clear_refs, detach), on a kernel without soft-dirty,
				// where no bit is ever set: only where the real backend
				// cannot run.
				if _, err := NewTracker(TrackerSoftDirty, w.pid); err == nil {
					b.Skip("soft-dirty works here: see the soft-dirty benchmark")
				}
				tr = newSoftDirtyTracker(w.pid)
				b.Cleanup(func() { tr.Close() })
			} else {
				tr = newTestTracker(b, name, w)
			}
			startTracking(b, tr, w)
			vmas := layout(b, w.pid)
			dirty(b, tr, w)
			var held time.Duration
			var reported int
			i := 0
			for b.Loop() {
				b.StopTimer()
				w.call("writen A %d %d", pages/100, i)
				i++
				b.StartTimer()
				rs, err := tr.Dirty(vmas)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				held += tr.Held()
				reported += len(pagesIn(rs, a.start, pages))
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
		regions []region
		got     []PageRange
	}
	scenario := func(final bool) run {
		w := startWorkload(t)
		file := filepath.Join(t.TempDir(), "data")
		if err := os.WriteFile(file, []byte(strings.Repeat("x", 8*pg)), 0o644); err != nil {
			t.Fatal(err)
		}
		a := w.mapRegion("map", "A", 64, 0)
		w.call("populate A")
		s := w.mapRegion("mapshared", "S", 16, 0)
		w.call("populate S")
		f := region{"F", 0, 8}
		ans := w.call("mapfile F %s 8", file)
		f.start, _ = strconv.ParseUint(ans, 0, 64)
		w.call("write F 5")
		r := w.mapRegion("map", "R", 8, 0)
		w.call("populate R")
		w.call("protect R r")
		e := w.mapRegion("map", "E", 8, 0)
		w.call("populate E")
		u := w.mapRegion("map", "U", 16, 0)
		tr := newTestTracker(t, TrackerUffdWP, w)
		startTracking(t, tr, w)
		dirty(t, tr, w) // a first round

		w.call("write A 1 5 63")
		w.call("write S 3")
		w.call("write F 2")
		w.call("kwrite U 1")
		w.call("dontneed A 9")
		w.call("dontneed F 5")
		w.call("dontneed R 2")
		w.call("protect E r")
		g := w.mapRegion("map", "G", 4, 0)
		regions := []region{a, s, f, r, e, u, g}
		if !final {
			return run{regions, dirty(t, tr, w)}
		}
		ft, ok := tr.(FinalTracker)
		if !ok {
			t.Fatalf("the %s tracker has no FinalDirty", tr.Name())
		}
		rs, err := ft.FinalDirty(layout(t, w.pid))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Dirty(layout(t, w.pid)); !errors.Is(err, ErrTrackerState) {
			t.Errorf("Dirty after FinalDirty: %v, want ErrTrackerState", err)
		}
		return run{regions, rs}
	}
	want := scenario(false)
	got := scenario(true)
	for i, wr := range want.regions {
		gr := got.regions[i]
		w, g := pagesIn(want.got, wr.start, wr.pages), pagesIn(got.got, gr.start, gr.pages)
		if !slices.Equal(w, g) {
			t.Errorf("region %s: FinalDirty reported %s, Dirty %s", wr.name, pageList(g), pageList(w))
		}
	}
	expect(t, "FinalDirty", got.got, got.regions, map[string][]int{
		"A": {1, 5, 9, 63}, "S": {3}, "F": {2, 5}, "R": {2}, "E": seq(0, 8), "U": {1}, "G": seq(0, 4),
	})
}
