// Package workload is the memory workload of the dirty-tracker and page
// sink tests: the test binary itself, run again as a child (the os/exec
// helper-process trick), that maps, writes, moves and unmaps memory on
// command. A test binary that imports this package becomes the workload
// when started by Start (see init); the Go runtime writes its own memory
// all the time, so tests look only at the regions the workload mapped.
//
// Protocol: one command per line on the workload's stdin, one answer line
// on its stdout, "ok ..." or "err ...". Regions have names; page numbers
// are relative to the region's start. The commands are those of
// workloadState.do.
package workload

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/internal/testutil"
)

const workloadEnv = "MIGRATE_TRACK_WORKLOAD"

func init() {
	if os.Getenv(workloadEnv) == "1" {
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

// Page is the page size the workload works in.
const Page = 4096

const pg = Page

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
	case "mapsysv": // mapsysv NAME PAGES: a System V segment, attached read-write, marked removed
		pages := atoi(f[2])
		at, err := reserveGuarded(pages, 0)
		if err != nil {
			return "", err
		}
		id, err := unix.SysvShmGet(unix.IPC_PRIVATE, pages*pg, unix.IPC_CREAT|0o600)
		if err != nil {
			return "", err
		}
		_, err = unix.SysvShmAttach(id, at, 0o40000) // SHM_REMAP: over the reservation
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)      // goes when the workload ends
		if err != nil {
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

// WriteRec is one write of the background writer: the page, and the
// CLOCK_MONOTONIC times just before and just after the store.
type WriteRec struct {
	Page          uint32
	Before, After int64
}

func MonoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// spin writes n times to random pages of r, one write every `every`
// nanoseconds at most, each storing a new value, and logs every write.
func (w *workloadState) spin(r *wlRegion, n int, every int64, path string) error {
	log := make([]WriteRec, 0, n)
	rng := rand.New(rand.NewPCG(uint64(n), uint64(every)))
	seq := w.seq
	next := MonoNow()
	for range n {
		for MonoNow() < next {
		}
		page := rng.IntN(r.pages)
		seq++
		before := MonoNow()
		binary.LittleEndian.PutUint64(raw.Mem(uint64(r.addr+uintptr(page)*pg+8), 8), seq)
		log = append(log, WriteRec{uint32(page), before, MonoNow()})
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

// Workload is the workload process as a test drives it.
type Workload struct {
	PID int

	t   testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// Start starts the test binary as a workload child; it is killed
// and reaped at the end of the test.
func Start(t testing.TB) *Workload {
	t.Helper()
	testutil.RequireRoot(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), workloadEnv+"=1")
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
	w := &Workload{t: t, cmd: cmd, in: in, out: bufio.NewReader(out), PID: cmd.Process.Pid}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, err := w.out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "ok") {
		t.Fatalf("workload did not start: %q %v", line, err)
	}
	return w
}

// Call sends a command and returns the answer after "ok".
func (w *Workload) Call(format string, args ...any) string {
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

// Region is a region of the workload as the test sees it.
type Region struct {
	Name  string
	Start uint64
	Pages int
}

// End is where the region ends.
func (r Region) End() uint64 { return r.Start + uint64(r.Pages)*pg }

// Map maps a region of pages (kind "map" or "mapshared") called name,
// with gap pages reserved after it to grow into.
func (w *Workload) Map(kind, name string, pages, gap int) Region {
	w.t.Helper()
	ans := w.Call("%s %s %d %d", kind, name, pages, gap)
	at, err := strconv.ParseUint(ans, 0, 64)
	if err != nil {
		w.t.Fatalf("map answer %q", ans)
	}
	return Region{name, at, pages}
}

// Layout reads the layout of process pid as the dumper does.
func Layout(t testing.TB, pid int) []core.VMA {
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
		case m.IsSysVShm():
			v.Kind, v.Shm = core.VMASysV, m.Inode
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

// ReadWriteLog reads the log of the spin command.
func ReadWriteLog(t testing.TB, path string) []WriteRec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]WriteRec, len(b)/20)
	if err := binary.Read(strings.NewReader(string(b)), binary.LittleEndian, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Go sends cmd without waiting: the answer line (without "ok" stripped, "err
// ..." on a broken pipe) arrives on the channel. Nothing else may talk to
// the workload until it has.
func (w *Workload) Go(cmd string) <-chan string {
	res := make(chan string, 1)
	go func() {
		io.WriteString(w.in, cmd+"\n")
		line, err := w.out.ReadString('\n')
		if err != nil {
			line = "err " + err.Error()
		}
		res <- strings.TrimSuffix(line, "\n")
	}()
	return res
}

// Kill kills the workload and waits for it.
func (w *Workload) Kill() {
	w.cmd.Process.Kill()
	w.cmd.Wait()
}
