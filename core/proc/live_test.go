package proc

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor calls try until it returns nil or maxWait passes, and returns the
// last error.
func waitFor(maxWait time.Duration, try func() error) error {
	deadline := time.Now().Add(maxWait)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startChild starts name args as a child of the test, and kills and reaps
// it at cleanup (unless the test reaped it).
func startChild(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// waitState waits until pid is in state.
func waitState(t *testing.T, pid int, state byte) *Stat {
	t.Helper()
	var st *Stat
	err := waitFor(5*time.Second, func() error {
		var err error
		st, err = ReadStat(pid)
		if err == nil && st.State != state {
			err = errors.New("state " + string(st.State))
		}
		return err
	})
	if err != nil {
		t.Fatalf("pid %d never reached state %c: %v", pid, state, err)
	}
	return st
}

func TestReadSelf(t *testing.T) {
	pid := os.Getpid()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	maps, err := ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	has := func(maps []Mapping, path string) bool {
		return slices.ContainsFunc(maps, func(m Mapping) bool { return m.Path == path })
	}
	for _, p := range []string{exe, "[stack]", "[vdso]", "[vvar]"} {
		if !has(maps, p) {
			t.Errorf("no %s in own maps", p)
		}
	}
	smaps, err := ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !has(smaps, exe) || smaps[0].VmFlags == nil || smaps[0].KernelPageSize != 4096 {
		t.Errorf("own smaps: %d mappings, first %+v", len(smaps), smaps[0])
	}

	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	comm := filepath.Base(exe)
	if len(comm) > 15 {
		comm = comm[:15]
	}
	if st.PID != pid || st.PPID != os.Getppid() || st.Comm != comm || st.NumThreads < 2 ||
		st.Flags&PF_KTHREAD != 0 || st.StartBrk == 0 || st.ArgStart == 0 {
		t.Errorf("own stat %+v", st)
	}

	status, err := ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if status.PID != pid || status.Tgid != pid || status.PPID != os.Getppid() || status.Name != comm ||
		status.UID[0] != uint32(os.Getuid()) || status.GID[1] != uint32(os.Getegid()) ||
		status.VmRSS == 0 || !status.HasUmask || len(status.NSpid) == 0 || status.NSpid[len(status.NSpid)-1] != pid {
		t.Errorf("own status %+v", status)
	}

	auxv, err := ReadAuxv(pid)
	if err != nil {
		t.Fatal(err)
	}
	vdso, ok := AuxvValue(auxv, AT_SYSINFO_EHDR)
	if !ok || !slices.ContainsFunc(maps, func(m Mapping) bool { return m.Path == "[vdso]" && m.Start == vdso }) {
		t.Errorf("AT_SYSINFO_EHDR %#x is not the [vdso] start", vdso)
	}
	if v, _ := AuxvValue(auxv, AT_PAGESZ); v != uint64(os.Getpagesize()) {
		t.Errorf("AT_PAGESZ = %d", v)
	}

	args, err := ReadCmdline(pid)
	if err != nil || !reflect.DeepEqual(args, os.Args) {
		t.Errorf("cmdline %q, %v; want %q", args, err, os.Args)
	}
	if got, err := ReadExe(pid); err != nil || got != exe {
		t.Errorf("ReadExe = %q, %v; want %q", got, err, exe)
	}
	if env, err := ReadEnviron(pid); err != nil || len(env) == 0 {
		t.Errorf("ReadEnviron: %d, %v", len(env), err)
	}

	// The calling thread is running while it reads its own state.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	tids, err := ReadTIDs(pid)
	if err != nil || !slices.Contains(tids, pid) || !slices.Contains(tids, tid) || !slices.IsSorted(tids) {
		t.Errorf("ReadTIDs = %v, %v (pid %d, tid %d)", tids, err, pid, tid)
	}
	if s, err := ThreadState(pid, tid); err != nil || s != 'R' {
		t.Errorf("ThreadState of own thread = %c, %v", s, err)
	}
	if st, err := ReadTaskStat(pid, tid); err != nil || st.PID != tid {
		t.Errorf("ReadTaskStat: %+v, %v", st, err)
	}
	if name, err := ReadComm(pid, pid); err != nil || name != comm {
		t.Errorf("ReadComm = %q, %v", name, err)
	}
	if k, err := IsKernelThread(pid); err != nil || k {
		t.Errorf("IsKernelThread(self) = %v, %v", k, err)
	}
}

func TestReadFDsAndFDInfo(t *testing.T) {
	pid := os.Getpid()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "a file"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("hello")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	efd, err := unix.Eventfd(5, unix.EFD_CLOEXEC|unix.EFD_SEMAPHORE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tfd)
	spec := unix.ItimerSpec{Interval: unix.Timespec{Sec: 2}, Value: unix.Timespec{Sec: 100}}
	if err := unix.TimerfdSettime(tfd, 0, &spec, nil); err != nil {
		t.Fatal(err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd), Pad: 7}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		t.Fatal(err)
	}

	fds, err := ReadFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSortedFunc(fds, func(a, b FDLink) int { return a.FD - b.FD }) {
		t.Errorf("fds not sorted: %v", fds)
	}
	target := func(fd int) string {
		for _, l := range fds {
			if l.FD == fd {
				return l.Target
			}
		}
		return "<none>"
	}
	if got := target(int(f.Fd())); got != f.Name() {
		t.Errorf("file fd -> %q, want %q", got, f.Name())
	}
	if got := target(int(r.Fd())); !strings.HasPrefix(got, "pipe:[") || got != target(int(w.Fd())) {
		t.Errorf("pipe fds -> %q, %q", got, target(int(w.Fd())))
	}
	if got := target(efd); got != "anon_inode:[eventfd]" {
		t.Errorf("eventfd -> %q", got)
	}
	if got := target(ep); got != "anon_inode:[eventpoll]" {
		t.Errorf("epoll -> %q", got)
	}

	fi, err := ReadFDInfo(pid, int(f.Fd()))
	if err != nil || fi.Pos != 5 || fi.Flags&unix.O_ACCMODE != unix.O_RDWR || fi.HasEventfd {
		t.Errorf("file fdinfo %+v, %v", fi, err)
	}
	var stat unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &stat); err != nil || fi.Ino != stat.Ino {
		t.Errorf("fdinfo ino %d, fstat %d (%v)", fi.Ino, stat.Ino, err)
	}
	fi, err = ReadFDInfo(pid, int(w.Fd()))
	if err != nil || fi.Flags&unix.O_ACCMODE != unix.O_WRONLY {
		t.Errorf("pipe fdinfo %+v, %v", fi, err)
	}
	fi, err = ReadFDInfo(pid, efd)
	if err != nil || !fi.HasEventfd || fi.EventfdCount != 5 || !fi.EventfdSemaphore || fi.Flags&unix.O_CLOEXEC == 0 {
		t.Errorf("eventfd fdinfo %+v, %v", fi, err)
	}
	fi, err = ReadFDInfo(pid, tfd)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := fi.Timerfd()
	if err != nil || tm.ClockID != unix.CLOCK_MONOTONIC || tm.Interval != (Timespec{Sec: 2}) || tm.Value.Sec < 90 || tm.Value.Sec > 100 {
		t.Errorf("timerfd %+v, %v", tm, err)
	}
	fi, err = ReadFDInfo(pid, ep)
	if err != nil {
		t.Fatal(err)
	}
	targets, err := fi.EpollTargets()
	want := []EpollTarget{{FD: efd, Events: unix.EPOLLIN | unix.EPOLLERR | unix.EPOLLHUP, Data: uint64(efd) | 7<<32, Ino: targets0Ino(targets)}}
	if err != nil || len(targets) != 1 || targets[0].FD != want[0].FD || targets[0].Events != want[0].Events || targets[0].Data != want[0].Data {
		t.Errorf("epoll targets %+v, %v; want %+v", targets, err, want)
	}

	if _, err := ReadFDInfo(pid, 1<<20); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fdinfo of a closed fd: %v", err)
	}
}

func targets0Ino(t []EpollTarget) uint64 {
	if len(t) == 0 {
		return 0
	}
	return t[0].Ino
}

func TestReadChild(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary:", err)
	}
	sleepReal, err := filepath.EvalSymlinks(sleep)
	if err != nil {
		t.Fatal(err)
	}
	cmd := startChild(t, sleep, "30")
	pid := cmd.Process.Pid
	// Wait for exec to finish and the child to sleep.
	st := waitState(t, pid, 'S')
	if err := waitFor(5*time.Second, func() error {
		var err error
		if st, err = ReadStat(pid); err == nil && st.Comm != "sleep" {
			err = errors.New("comm " + st.Comm)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getpid() || st.NumThreads != 1 || st.Flags&PF_KTHREAD != 0 {
		t.Errorf("child stat %+v", st)
	}

	maps, err := ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(maps, func(m Mapping) bool { return m.Path == sleepReal && m.Prot&unix.PROT_EXEC != 0 }) {
		t.Errorf("no executable mapping of %s in child maps", sleepReal)
	}
	smaps, err := ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(smaps) != len(maps) {
		t.Errorf("%d mappings in smaps, %d in maps", len(smaps), len(maps))
	}
	for i := range smaps {
		if smaps[i].Start != maps[i].Start || smaps[i].Path != maps[i].Path || smaps[i].VmFlags == nil {
			t.Errorf("smaps %d: %+v vs maps %+v", i, smaps[i], maps[i])
		}
	}

	status, err := ReadStatus(pid)
	if err != nil || status.Name != "sleep" || status.PPID != os.Getpid() || status.Threads != 1 || status.State != 'S' {
		t.Errorf("child status %+v, %v", status, err)
	}
	fds, err := ReadFDs(pid)
	if err != nil || len(fds) < 3 || fds[0].FD != 0 || fds[0].Target != os.DevNull {
		t.Errorf("child fds %v, %v", fds, err)
	}
	tids, err := ReadTIDs(pid)
	if err != nil || !reflect.DeepEqual(tids, []int{pid}) {
		t.Errorf("child tids %v, %v", tids, err)
	}
	if s, err := ThreadState(pid, pid); err != nil || s != 'S' {
		t.Errorf("child ThreadState %c, %v", s, err)
	}
	auxv, err := ReadAuxv(pid)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := AuxvValue(auxv, AT_EXECFN); !ok || v < st.StartStack-(1<<20) {
		t.Errorf("child AT_EXECFN %#x, stack %#x", v, st.StartStack)
	}
	if args, err := ReadCmdline(pid); err != nil || !reflect.DeepEqual(args, []string{sleep, "30"}) {
		t.Errorf("child cmdline %q, %v", args, err)
	}
	if exe, err := ReadExe(pid); err != nil || exe != sleepReal {
		t.Errorf("child exe %q, %v", exe, err)
	}

	// A zombie: stat still reads, maps report the exit.
	cmd.Process.Kill()
	st = waitState(t, pid, 'Z')
	if st.StartCode != 0 {
		t.Errorf("zombie stat %+v", st)
	}
	if _, err := ReadMaps(pid); !errors.Is(err, unix.ESRCH) {
		t.Errorf("ReadMaps of a zombie: %v, want ESRCH", err)
	}
	if _, err := ReadSmaps(pid); !errors.Is(err, unix.ESRCH) {
		t.Errorf("ReadSmaps of a zombie: %v, want ESRCH", err)
	}
	if args, err := ReadCmdline(pid); err != nil || args != nil {
		t.Errorf("zombie cmdline %q, %v", args, err)
	}

	// Reaped: everything is gone.
	cmd.Wait()
	gone := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
			t.Errorf("%s of a reaped process: %v", what, err)
		}
	}
	_, err = ReadStat(pid)
	gone("ReadStat", err)
	_, err = ReadStatus(pid)
	gone("ReadStatus", err)
	_, err = ReadMaps(pid)
	gone("ReadMaps", err)
	_, err = ReadFDs(pid)
	gone("ReadFDs", err)
	_, err = ReadTIDs(pid)
	gone("ReadTIDs", err)
	_, err = ReadAuxv(pid)
	gone("ReadAuxv", err)
	_, err = ThreadState(pid, pid)
	gone("ThreadState", err)
	_, err = IsKernelThread(pid)
	gone("IsKernelThread", err)
	var pe *fs.PathError
	if _, err = ReadStat(pid); !errors.As(err, &pe) || !strings.HasPrefix(pe.Path, "/proc/") {
		t.Errorf("ReadStat error %v does not name the file", err)
	}
}

// TestReadFileGone checks a read on a file opened while the process lived.
func TestReadFileGone(t *testing.T) {
	cmd := startChild(t, "sleep", "30")
	pid := cmd.Process.Pid
	waitState(t, pid, 'S')
	path := pidPath(pid, "stat")
	fd, err := openRaw(path, unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd.Process.Kill()
	cmd.Wait()
	_, err = readFD(fd, path, 512)
	if !errors.Is(err, unix.ESRCH) {
		t.Errorf("read of stat after exit: %v, want ESRCH", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != path {
		t.Errorf("error %v does not name %s", err, path)
	}
}

func TestKernelThread(t *testing.T) {
	st, err := ReadStat(2)
	if err != nil || st.Comm != "kthreadd" {
		t.Skipf("no kthreadd at pid 2 in this PID namespace (%v)", err)
	}
	k, err := IsKernelThread(2)
	if err != nil || !k {
		t.Errorf("IsKernelThread(2) = %v, %v", k, err)
	}
	maps, err := ReadMaps(2)
	if err != nil || len(maps) != 0 {
		t.Errorf("kthread maps %v, %v", maps, err)
	}
	if args, err := ReadCmdline(2); err != nil || args != nil {
		t.Errorf("kthread cmdline %q, %v", args, err)
	}
}

func TestReadPIDs(t *testing.T) {
	pids, err := ReadPIDs()
	if err != nil || !slices.Contains(pids, os.Getpid()) || !slices.IsSorted(pids) {
		t.Errorf("ReadPIDs: %d pids, %v", len(pids), err)
	}
}
