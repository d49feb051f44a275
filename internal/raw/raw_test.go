package raw

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

const pageSize = 4096

// mapPages maps n private anonymous pages, unmapped at the end of the test.
func mapPages(t *testing.T, n int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

func TestIgnoringEINTR(t *testing.T) {
	calls := 0
	err := IgnoringEINTR(func() error {
		calls++
		if calls < 3 {
			return unix.EINTR
		}
		return unix.EBADF
	})
	if calls != 3 || err != unix.EBADF {
		t.Errorf("IgnoringEINTR: %d calls, %v; want 3 calls, EBADF", calls, err)
	}
	calls = 0
	v, err := IgnoringEINTR2(func() (int, error) {
		calls++
		if calls < 2 {
			return -1, fmt.Errorf("wrapped: %w", unix.EINTR)
		}
		return 7, nil
	})
	if calls != 2 || v != 7 || err != nil {
		t.Errorf("IgnoringEINTR2: %d calls, %d, %v; want 2 calls, 7, nil", calls, v, err)
	}
}

func TestIoctl(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.Write(p[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	var n int32
	if _, err := Ioctl(p[0], unix.TIOCINQ, &n); err != nil || n != 5 {
		t.Errorf("TIOCINQ (FIONREAD) = %d, %v; want 5", n, err)
	}
	if _, err := Ioctl(-1, unix.TIOCINQ, &n); err != unix.EBADF {
		t.Errorf("TIOCINQ (FIONREAD) of fd -1: %v, want EBADF", err)
	}
	if _, err := IoctlValue(p[0], unix.TIOCSCTTY, 0); err != unix.ENOTTY {
		t.Errorf("TIOCSCTTY on a pipe: %v, want ENOTTY", err)
	}
}

func TestPagemapScan(t *testing.T) {
	mem := mapPages(t, 4)
	mem[0] = 1
	mem[2*pageSize] = 1
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	start := AddrOf(mem)
	arg := PmScanArg{Start: start, End: start + 4*pageSize, CategoryMask: PAGE_IS_PRESENT, ReturnMask: PAGE_IS_PRESENT}
	got, end, err := PagemapScan(int(pm.Fd()), arg, make([]PageRegion, 8))
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		testutil.Unavailable(t, "PAGEMAP_SCAN (Linux 6.7): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := []PageRegion{
		{Start: start, End: start + pageSize, Categories: PAGE_IS_PRESENT},
		{Start: start + 2*pageSize, End: start + 3*pageSize, Categories: PAGE_IS_PRESENT},
	}
	if !slices.Equal(got, want) || end != arg.End {
		t.Errorf("PAGEMAP_SCAN = %v ending at %#x, want %v ending at %#x", got, end, want, arg.End)
	}
	// A vector of one region stops the walk after the first.
	got, end, err = PagemapScan(int(pm.Fd()), arg, make([]PageRegion, 1))
	if err != nil || !slices.Equal(got, want[:1]) || end >= arg.End {
		t.Errorf("PAGEMAP_SCAN with room for one: %v ending at %#x, %v", got, end, err)
	}
}

// TestUffdWP drives userfaultfd async write-protect on this process's own
// pages: register, protect, write one page, and find exactly that page with
// PAGEMAP_SCAN, which protects it again.
func TestUffdWP(t *testing.T) {
	testutil.RequireRoot(t)
	supported, err := UffdFeatures()
	if err != nil {
		testutil.Unavailable(t, "userfaultfd: %v", err)
	}
	if supported&UFFD_FEATURE_WP_ASYNC == 0 {
		testutil.Unavailable(t, "UFFD_FEATURE_WP_ASYNC (Linux 6.7); features %#x", supported)
	}
	fd, via, err := OpenUserfaultfd(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	t.Logf("userfaultfd through %s, features %#x", via, supported)
	want := uint64(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
	api, err := UffdAPI(fd, want)
	if err != nil {
		t.Fatal(err)
	}
	if api.Features&want != want || api.Ioctls&(1<<0x3F) == 0 {
		t.Errorf("UFFDIO_API answered features %#x, ioctls %#x", api.Features, api.Ioctls)
	}
	if _, err := UffdAPI(fd, want); err == nil {
		t.Errorf("a second UFFDIO_API on one userfaultfd succeeded")
	}

	mem := mapPages(t, 4)
	mem[pageSize] = 1 // populated before the protection
	start, length := AddrOf(mem), uint64(len(mem))
	ioctls, err := UffdRegister(fd, start, length, UFFDIO_REGISTER_MODE_WP)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&(1<<0x06) == 0 {
		t.Errorf("registered range takes ioctls %#x, without UFFDIO_WRITEPROTECT", ioctls)
	}
	if err := UffdWriteprotect(fd, start, length, UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		t.Fatal(err)
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	scan := func() []PageRegion {
		t.Helper()
		got, end, err := PagemapScan(int(pm.Fd()), PmScanArg{
			Flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, Start: start, End: start + length,
			CategoryMask: PAGE_IS_WRITTEN, ReturnMask: PAGE_IS_WRITTEN,
		}, make([]PageRegion, 8))
		if err != nil || end != start+length {
			t.Fatalf("PAGEMAP_SCAN: %v, ended at %#x", err, end)
		}
		return got
	}
	if got := scan(); len(got) != 0 {
		t.Errorf("written right after the protection: %v", got)
	}
	for _, page := range []uint64{1, 3} {
		mem[page*pageSize]++
		want := []PageRegion{{Start: start + page*pageSize, End: start + (page+1)*pageSize, Categories: PAGE_IS_WRITTEN}}
		if got := scan(); !slices.Equal(got, want) {
			t.Errorf("after a write to page %d: %v, want %v", page, got, want)
		}
	}
	if err := UffdWriteprotect(fd, start, length, 0); err != nil {
		t.Errorf("lift the protection: %v", err)
	}
	if err := UffdUnregister(fd, start, length); err != nil {
		t.Errorf("UFFDIO_UNREGISTER: %v", err)
	}
	if err := UffdWriteprotect(fd, start, length, UFFDIO_WRITEPROTECT_MODE_WP); err == nil {
		t.Errorf("UFFDIO_WRITEPROTECT of an unregistered range succeeded")
	}
}

func TestSockopt(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	set := unix.Linger{Onoff: 1, Linger: 7}
	if err := Setsockopt(fd, unix.SOL_SOCKET, unix.SO_LINGER, &set); err != nil {
		t.Fatal(err)
	}
	var got unix.Linger
	if n, err := Getsockopt(fd, unix.SOL_SOCKET, unix.SO_LINGER, &got); err != nil || n != 8 || got != set {
		t.Errorf("SO_LINGER = %+v (%d bytes), %v; want %+v", got, n, err, set)
	}
	b := make([]byte, 4)
	if n, err := GetsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_TYPE, b, 4); err != nil || n != 4 || binary.NativeEndian.Uint32(b) != unix.SOCK_STREAM {
		t.Errorf("SO_TYPE = %x (%d bytes), %v", b, n, err)
	}
	// SO_GET_FILTER counts in filter blocks, and answers the count to a
	// nil buffer.
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff}, {Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := Setsockopt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		t.Fatal(err)
	}
	n, err := GetsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_GET_FILTER, nil, 0)
	if err != nil || n != 2 {
		t.Fatalf("SO_GET_FILTER count = %d, %v; want 2", n, err)
	}
	fb := make([]byte, 8*n)
	if got, err := GetsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_GET_FILTER, fb, n); err != nil || got != n || !bytes.Equal(fb, SliceBytes(prog)) {
		t.Errorf("SO_GET_FILTER = %x (%d), %v; want %x", fb, got, err, SliceBytes(prog))
	}
	if _, err := GetsockoptBytes(-1, unix.SOL_SOCKET, unix.SO_TYPE, b, 4); err != unix.EBADF {
		t.Errorf("fd -1: %v, want EBADF", err)
	}
}

// startSleep starts sleep(1) and waits until it sleeps (its libc set up).
func startSleep(t *testing.T) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, "/bin/sleep", "1000")
	testutil.WaitSyscall(t, 10*time.Second, p.PID, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_NANOSLEEP)
	return p
}

func TestProcessVM(t *testing.T) {
	testutil.RequireRoot(t)
	mem := mapPages(t, 3)
	if err := unix.Mprotect(mem[2*pageSize:], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	copy(mem, "remote bytes")
	copy(mem[pageSize:], "second area")
	pid := os.Getpid()
	buf := make([]byte, 12)
	if n, err := ReadRemote(pid, buf, AddrOf(mem)); err != nil || n != 12 || string(buf) != "remote bytes" {
		t.Errorf("ReadRemote = %q (%d), %v", buf, n, err)
	}
	if n, err := WriteRemote(pid, []byte("REMOTE"), AddrOf(mem)); err != nil || n != 6 || string(mem[:12]) != "REMOTE bytes" {
		t.Errorf("WriteRemote: %q (%d), %v", mem[:12], n, err)
	}
	// Two areas into one buffer; a third that may not be read ends the read.
	remote := []unix.RemoteIovec{
		{Base: uintptr(AddrOf(mem)), Len: 6},
		{Base: uintptr(AddrOf(mem[pageSize:])), Len: 6},
		{Base: uintptr(AddrOf(mem[pageSize:])) + pageSize, Len: 6},
	}
	buf = make([]byte, 18)
	if n, err := ReadRemotev(pid, buf, remote); err != nil || n != 12 || string(buf[:12]) != "REMOTEsecond" {
		t.Errorf("ReadRemotev = %q (%d), %v; want 12 bytes", buf, n, err)
	}
	if n, err := ReadRemote(pid, nil, AddrOf(mem)); n != 0 || err != nil {
		t.Errorf("empty read: %d, %v", n, err)
	}
	// Another process: its memory is not ours.
	p := startSleep(t)
	if _, err := ReadRemote(p.PID, buf, AddrOf(mem)); err == nil {
		t.Errorf("read of this process's address %#x in sleep succeeded", AddrOf(mem))
	}
}

func TestGetRobustList(t *testing.T) {
	testutil.RequireRoot(t)
	p := startSleep(t)
	head, length, err := GetRobustList(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	// glibc registers the main thread's list at start: a struct
	// robust_list_head is 24 bytes.
	if head == 0 || length != 24 {
		t.Errorf("robust list of sleep: %#x, %d bytes", head, length)
	}
	if _, _, err := GetRobustList(testutil.FreePID(t)); err != unix.ESRCH {
		t.Errorf("robust list of a free pid: %v, want ESRCH", err)
	}
}

func TestClone3SetTID(t *testing.T) {
	testutil.RequireRoot(t)
	for range 10 {
		tid := testutil.FreePID(t)
		pid, err := Clone3SetTID(tid)
		if errors.Is(err, unix.EEXIST) {
			continue // taken meanwhile
		}
		if errors.Is(err, unix.ENOSYS) {
			testutil.Unavailable(t, "clone3 (Linux 5.5): %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		var ws unix.WaitStatus
		_, err = IgnoringEINTR2(func() (int, error) { return unix.Wait4(pid, &ws, 0, nil) })
		if err != nil {
			t.Fatal(err)
		}
		if pid != tid || !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("child %d (asked for %d), wait status %#x", pid, tid, uint32(ws))
		}
		return
	}
	t.Fatal("no free pid stayed free")
}

func TestPrctlMMMap(t *testing.T) {
	testutil.RequireRoot(t)
	size, err := PrctlMMMapSize()
	if err != nil {
		testutil.Unavailable(t, "PR_SET_MM_MAP (CONFIG_CHECKPOINT_RESTORE): %v", err)
	}
	var m PrctlMMMap
	if size != uint32(len(Bytes(&m))) {
		t.Errorf("kernel's struct prctl_mm_map has %d bytes, ours %d", size, len(Bytes(&m)))
	}
	// An all-zero map fails the kernel's checks before anything changes
	// (code below mmap_min_addr).
	if err := PrctlSetMMMap(m, []byte{0}); err != unix.EINVAL {
		t.Errorf("PR_SET_MM_MAP with a zero map: %v, want EINVAL", err)
	}
}

// TestPtrace seizes sleep(1) from a locked thread, stops it, and uses each
// ptrace request on it.
func TestPtrace(t *testing.T) {
	testutil.RequireRoot(t)
	p := startSleep(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid := p.PID
	if err := Ptrace(unix.PTRACE_SEIZE, pid, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(pid, unix.SIGKILL) // p's cleanup reaps it
	if err := Ptrace(unix.PTRACE_INTERRUPT, pid, 0, 0); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := IgnoringEINTR2(func() (int, error) { return unix.Wait4(pid, &ws, unix.WALL, nil) }); err != nil || !ws.Stopped() {
		t.Fatalf("wait for the stop: %#x, %v", uint32(ws), err)
	}

	si, err := PtraceGetSiginfo(pid)
	if err != nil || len(si) != SiginfoSize || binary.NativeEndian.Uint32(si) != uint32(unix.SIGTRAP) {
		t.Errorf("PTRACE_GETSIGINFO of an interrupt stop: %x, %v", si[:16], err)
	}
	mask := uint64(1)<<(unix.SIGUSR1-1) | uint64(1)<<(unix.SIGUSR2-1)
	if err := PtraceSetSigmask(pid, mask); err != nil {
		t.Fatal(err)
	}
	if got, err := PtraceGetSigmask(pid); err != nil || got != mask {
		t.Errorf("signal mask %#x, %v; want %#x", got, err, mask)
	}
	if q, err := PtracePeekSiginfo(pid, false); err != nil || len(q) != 0 {
		t.Errorf("queue before: %d signals, %v", len(q), err)
	}
	// Queue blocked signals: SIGUSR1 to the thread, SIGUSR2 to the process,
	// with si_code SI_QUEUE (-1) and a value.
	queue := func(sig unix.Signal) []byte {
		si := make([]byte, SiginfoSize)
		binary.NativeEndian.PutUint32(si[0:], uint32(sig))
		binary.NativeEndian.PutUint32(si[8:], 0xffffffff)
		binary.NativeEndian.PutUint32(si[16:], uint32(os.Getpid()))
		binary.NativeEndian.PutUint32(si[24:], uint32(sig)+100)
		return si
	}
	if err := Tgsigqueueinfo(pid, pid, uint32(unix.SIGUSR1), queue(unix.SIGUSR1)); err != nil {
		t.Fatal(err)
	}
	if err := Sigqueueinfo(pid, uint32(unix.SIGUSR2), queue(unix.SIGUSR2)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		shared bool
		sig    unix.Signal
	}{{false, unix.SIGUSR1}, {true, unix.SIGUSR2}} {
		q, err := PtracePeekSiginfo(pid, c.shared)
		if err != nil || len(q) != 1 || binary.NativeEndian.Uint32(q[0]) != uint32(c.sig) ||
			int32(binary.NativeEndian.Uint32(q[0][8:])) != -1 || binary.NativeEndian.Uint32(q[0][24:]) != uint32(c.sig)+100 {
			t.Errorf("PTRACE_PEEKSIGINFO shared=%v: %d signals, %v; want %v", c.shared, len(q), err, c.sig)
		}
	}
	if err := Tgsigqueueinfo(pid, pid, uint32(unix.SIGUSR1), make([]byte, 8)); err != unix.EINVAL {
		t.Errorf("short siginfo: %v, want EINVAL", err)
	}

	regs, err := PtraceGetRegset(pid, unix.NT_PRSTATUS, make([]byte, 4096))
	if err != nil || len(regs) != int(sizeofPtraceRegs()) {
		t.Errorf("NT_PRSTATUS: %d bytes, %v; want %d", len(regs), err, sizeofPtraceRegs())
	}
	if err := PtraceSetRegset(pid, unix.NT_PRSTATUS, regs); err != nil {
		t.Errorf("set NT_PRSTATUS back: %v", err)
	}
	if _, err := PtraceGetRseqConfiguration(pid); err != nil && !errors.Is(err, unix.EIO) {
		t.Errorf("PTRACE_GET_RSEQ_CONFIGURATION: %v", err)
	}
	if err := Ptrace(unix.PTRACE_DETACH, pid, 0, 0); err != nil {
		t.Errorf("detach: %v", err)
	}
}

func sizeofPtraceRegs() int {
	var r unix.PtraceRegs
	return len(Bytes(&r))
}

func TestMemViews(t *testing.T) {
	mem := mapPages(t, 1)
	copy(mem, "abc")
	if got := Mem(AddrOf(mem), 3); string(got) != "abc" {
		t.Errorf("Mem = %q", got)
	}
	if AddrOf(nil) != 0 || SliceBytes([]uint64(nil)) != nil {
		t.Errorf("empty views are not empty")
	}
	v := struct{ A, B uint32 }{1, 2}
	if b := Bytes(&v); !bytes.Equal(b, []byte{1, 0, 0, 0, 2, 0, 0, 0}) {
		t.Errorf("Bytes = %x", b)
	}
	if b := SliceBytes([]uint16{1, 2}); !bytes.Equal(b, []byte{1, 0, 2, 0}) {
		t.Errorf("SliceBytes = %x", b)
	}
	s := "shared string"
	if StringAddr(s) != StringAddr(s[:3]) || StringAddr(s) == StringAddr(string([]byte(s))) {
		t.Errorf("StringAddr does not tell shared strings apart")
	}
}

// TestUserfaultfdDevice makes a userfaultfd the other way OpenUserfaultfd
// knows, through /dev/userfaultfd (Linux 6.1).
func TestUserfaultfdDevice(t *testing.T) {
	testutil.RequireRoot(t)
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		testutil.Unavailable(t, "/dev/userfaultfd: %v", err)
	}
	defer unix.Close(dev)
	fd, err := IoctlValue(dev, USERFAULTFD_IOC_NEW, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if api, err := UffdAPI(fd, 0); err != nil || api.Features == 0 {
		t.Errorf("UFFDIO_API on a userfaultfd from /dev/userfaultfd: %#x, %v", api.Features, err)
	}
}

// TestPtraceSeccomp reads back the two filters of the main thread of the
// seccomp fixture (filter A for all threads, then B with
// SECCOMP_FILTER_FLAG_LOG), and finds no third.
func TestPtraceSeccomp(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "seccomp"))
	p.WaitLine(t, 10*time.Second, 0, "ready")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := Ptrace(unix.PTRACE_SEIZE, p.PID, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(p.PID, unix.SIGKILL) // p's cleanup reaps it
	if err := Ptrace(unix.PTRACE_INTERRUPT, p.PID, 0, 0); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := IgnoringEINTR2(func() (int, error) { return unix.Wait4(p.PID, &ws, unix.WALL, nil) }); err != nil || !ws.Stopped() {
		t.Fatalf("wait for the stop: %#x, %v", uint32(ws), err)
	}
	var flags []uint64
	for i := range 2 {
		prog, err := PtraceSeccompGetFilter(p.PID, i)
		if err != nil || len(prog) == 0 || len(prog)%8 != 0 {
			t.Fatalf("filter %d: %d bytes, %v", i, len(prog), err)
		}
		f, err := PtraceSeccompGetMetadata(p.PID, i)
		if err != nil {
			t.Fatalf("filter %d metadata: %v", i, err)
		}
		flags = append(flags, f)
	}
	if !slices.Contains(flags, unix.SECCOMP_FILTER_FLAG_LOG) {
		t.Errorf("filter flags %v, none with SECCOMP_FILTER_FLAG_LOG", flags)
	}
	if _, err := PtraceSeccompGetFilter(p.PID, 2); err != unix.ENOENT {
		t.Errorf("a third filter: %v, want ENOENT", err)
	}
}

// TestProcessMrelease: process_mrelease refuses a process that was not
// killed, and frees the memory of one that was (or finds it gone).
func TestProcessMrelease(t *testing.T) {
	testutil.RequireRoot(t)
	p := startSleep(t)
	pidfd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		testutil.Unavailable(t, "pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	err = ProcessMrelease(pidfd)
	if errors.Is(err, unix.ENOSYS) {
		testutil.Unavailable(t, "process_mrelease (Linux 5.15): %v", err)
	}
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("process_mrelease of a live process: %v, want EINVAL", err)
	}
	p.Signal(t, unix.SIGKILL)
	// Its memory freed, or found gone with it (ESRCH: it died already).
	if err := ProcessMrelease(pidfd); err != nil && !errors.Is(err, unix.ESRCH) {
		t.Errorf("process_mrelease of a killed process: %v", err)
	}
	p.WaitExit(t, 10*time.Second)
}
