package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// TestHeapChecksum: a counter over a 256 MiB malloc'ed heap and a 32 MiB
// brk heap. After restore the memory checksum is the same, the counter goes
// on, and malloc from the brk heap still works (brk grows).
func TestHeapChecksum(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "counter")
	p := testutil.Start(t, bin, "-m", "256", "-b", "32")
	ready, _ := p.WaitLine(t, long, 0, "ready")
	sum0 := field(t, ready, "sum")
	p.WaitTick(t, short, 5)
	before := testutil.FDs(t, p.PID)

	dir, img := dumpKill(t, p, "")
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	checkFDsSame(t, before, r.PID, 1, 2)
	r.WaitTick(t, short, last+5)

	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	sum, _ := r.WaitLine(t, long, n, "sum ")
	if got := strings.TrimPrefix(sum, "sum "); got != sum0 {
		t.Errorf("heap checksum after restore %s, before dump %s", got, sum0)
	}
	brk, _ := r.WaitLine(t, short, n, "brk ")
	if !strings.HasSuffix(brk, " ok") {
		t.Errorf("malloc from the brk heap after restore: %s (want the break to grow and the memory to hold)", brk)
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
	checkTicksContinuous(t, r.Lines(t), last+5)
}

// TestPipeBuffered: the process reads back, slowly, 200000 bytes it wrote
// into its own 256 KiB pipe. Dumped in the middle, restored, the rest
// arrives intact and in order, and the pipe keeps its size.
func TestPipeBuffered(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "pipe"), "buffered")
	p.WaitLine(t, short, 0, "chunk 5 ok")
	before := testutil.FDs(t, p.PID)
	dir, img := dumpKill(t, p, "")
	if lines := p.Lines(t); strings.HasPrefix(lines[len(lines)-1], "done") {
		t.Fatal("the workload finished before the dump; nothing was tested")
	}
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	checkFDsSame(t, before, r.PID, 1, 2)
	done, _ := r.WaitLine(t, long, 0, "done")
	if ws := r.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("restored process ended with %v, want exit 0", ws)
	}
	if want := "done bytes=200000 pipesize=262144 ok"; done != want {
		t.Errorf("got %q, want %q", done, want)
	}
	var chunks []int
	for _, l := range r.Lines(t) {
		var i int
		if _, err := fmt.Sscanf(l, "chunk %d ok", &i); err == nil {
			chunks = append(chunks, i)
		}
	}
	for i, c := range chunks {
		if c != i {
			t.Fatalf("chunk %d logged at position %d: chunks lost or repeated", c, i)
		}
	}
	if len(chunks) != 100 {
		t.Errorf("%d chunks read, want 100", len(chunks))
	}
}

// TestPipeBlockedRead: the process is blocked in read() on an empty pipe
// when it is dumped; after restore its alarm (an itimer) fires, the handler
// writes into the pipe, and the read returns the message.
func TestPipeBlockedRead(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "pipe"), "block")
	p.WaitLine(t, short, 0, "ready")
	testutil.WaitSyscall(t, short, p.PID, unix.SYS_READ)
	dir, _ := dumpKill(t, p, "")
	if got := p.Lines(t); len(got) != 1 {
		t.Fatalf("the alarm fired before the dump; log %q", got)
	}
	r := restoreOK(t, dir, p.Log)
	got, _ := r.WaitLine(t, short, 0, "got ")
	if want := "got wake-up-message-from-sigalrm"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if ws := r.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("restored process ended with %v, want exit 0", ws)
	}
}

// TestFileOffsets: a file read from and one written to at their offsets
// (not O_APPEND), and a file deleted while open. After restore reading and
// writing go on at the right offsets, and the deleted file's contents and
// offset are there, while its name stays gone.
func TestFileOffsets(t *testing.T) {
	testutil.RequireRoot(t)
	p, out, ready := startFiles(t)
	var in, outFD, del int
	if _, err := fmt.Sscanf(field(t, ready, "fds"), "%d,%d,%d", &in, &outFD, &del); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 5)
	dir, img := dumpKill(t, p, "")
	last := p.LastTick(t)
	var delFD *core.FD
	for i, f := range img.Process.FDs {
		if f.FD == del {
			delFD = &img.Process.FDs[i]
		}
	}
	if delFD == nil || delFD.File == nil || !delFD.File.Deleted || delFD.File.Blob == "" {
		t.Fatalf("image fd %d (deleted file): %+v, want a deleted file with its contents stored", del, delFD)
	}

	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	r.WaitTick(t, short, last+5)
	if _, err := os.Stat(filepath.Join(filepath.Dir(out), "deleted.dat")); !os.IsNotExist(err) {
		t.Errorf("the deleted file came back under its name (stat: %v)", err)
	}
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", r.PID, del)); err != nil || !strings.HasSuffix(l, " (deleted)") {
		t.Errorf("fd %d of the restored process -> %q (%v), want a deleted file", del, l, err)
	}
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	got, _ := r.WaitLine(t, short, n, "deleted")
	if want := "deleted ok size=300000 pos=12345 nlink=0"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	r.WaitTick(t, short, r.LastTick(t)+2)
	r.Kill(t)

	lines := r.Lines(t)
	checkTicksContinuous(t, lines, last+5)
	for _, l := range lines {
		var tick, line int
		if _, err := fmt.Sscanf(l, "tick %d read=%d", &tick, &line); err == nil && line != tick+9 {
			t.Errorf("%q: read line %d at tick %d, want line %d (the read offset moved)", l, line, tick, tick+9)
		}
	}
	content, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	ticks := testutil.Ticks(lines)
	var want strings.Builder
	want.WriteString("header\n")
	for i := 1; i <= ticks[len(ticks)-1]; i++ {
		fmt.Fprintf(&want, "rec %d\n", i)
	}
	if string(content) != want.String() {
		t.Errorf("%s is not header + rec 1..%d in order:\n%s", out, ticks[len(ticks)-1], firstDiff(string(content), want.String()))
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d: got %q, want %q", i+1, a, b)
		}
	}
	return "(same lines)"
}

// TestSignals: handlers with their flags, a blocked SIGUSR1 pending on the
// thread, two queued real-time signals pending on the process with their
// values, a sigaltstack, and an itimer. After restore the itimer keeps
// firing; once unblocked the pending signals are delivered, in order, with
// their siginfo; SIGUSR2 runs on the alternate stack.
func TestSignals(t *testing.T) {
	testutil.RequireRoot(t)
	trigger := filepath.Join(t.TempDir(), "unblock")
	p := testutil.Start(t, testutil.Build(t, "signals"), trigger)
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	actions, _ := p.WaitLine(t, short, 0, "actions")
	before := testutil.Take(t, p.PID)
	if before.Status["SigPnd"] == "0000000000000000" || before.Status["ShdPnd"] == "0000000000000000" {
		t.Fatalf("the workload has no pending signals: %v", before.Status)
	}

	dir, _ := dumpKill(t, p, "")
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	after := testutil.Take(t, r.PID)
	// The itimer's SIGALRM is pending for a moment each time it fires
	// (until the handler runs): whether a snapshot of the running
	// process catches it is timing, so it is left out of the pending sets.
	alrm := func(f, v string) string {
		if f != "SigPnd" && f != "ShdPnd" {
			return v
		}
		n, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", f, v, err)
		}
		return fmt.Sprintf("%016x", n&^(1<<(unix.SIGALRM-1)))
	}
	for _, f := range []string{"SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"} {
		if b, a := alrm(f, before.Status[f]), alrm(f, after.Status[f]); b != a {
			t.Errorf("%s: %s before the dump, %s after restore (SIGALRM left out)", f, b, a)
		}
	}

	alarmsAt := func(from int) (int, int) {
		lines := r.Lines(t)
		var tick, alarms int
		for _, l := range lines[from:] {
			fmt.Sscanf(l, "tick %d alarms %d", &tick, &alarms)
		}
		return tick, alarms
	}
	r.WaitTick(t, short, last+1)
	_, a0 := alarmsAt(0)
	testutil.WaitFor(t, short, "the itimer to keep firing after restore", func() bool {
		_, a := alarmsAt(0)
		return a >= a0+5
	})

	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR2)
	if got, _ := r.WaitLine(t, short, n, "usr2"); got != "usr2 onstack=1" {
		t.Errorf("SIGUSR2 handler: %q, want it on the alternate stack", got)
	}
	// The actions of a default and of an ignored signal, flags and mask
	// included.
	if got, _ := r.WaitLine(t, short, n, "actions"); got != actions {
		t.Errorf("after restore %q, before %q", got, actions)
	}

	n = len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, ui := r.WaitLine(t, short, n, "unblocked")
	r.WaitTick(t, short, r.LastTick(t)+2)
	var handled []string
	for _, l := range r.Lines(t)[n:] {
		if strings.HasPrefix(l, "usr1") || strings.HasPrefix(l, "rt ") {
			handled = append(handled, l)
		}
	}
	// The kernel sets up all three frames at once, so the handlers run in
	// an order of its choosing; what must hold is that each runs once, with
	// its siginfo, and the queued values keep their order.
	want := []string{
		fmt.Sprintf("usr1 handled code=%d pid=%d", -6 /* SI_TKILL */, r.PID),
		"rt value=42 code=-1", // SI_QUEUE
		"rt value=43 code=-1",
	}
	sorted := slices.Sorted(slices.Values(handled))
	if !slices.Equal(sorted, slices.Sorted(slices.Values(want))) ||
		slices.Index(handled, want[1]) > slices.Index(handled, want[2]) {
		t.Errorf("signals delivered after unblocking (line %d): %q, want %q in some order, 42 before 43", ui, handled, want)
	}
}

// smapsFlags returns the VmFlags of the area starting at addr.
func smapsFlags(t *testing.T, pid int, addr uint64) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		var start, end uint64
		if n, _ := fmt.Sscanf(l, "%x-%x ", &start, &end); n == 2 && strings.Contains(strings.Fields(l)[0], "-") {
			in = start == addr
			continue
		}
		if v, ok := strings.CutPrefix(l, "VmFlags:"); ok && in {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no area at %#x in process %d", addr, pid)
	return ""
}

// TestMappings: a private file mapping written to (the changed pages
// survive, the file does not change, only changed pages are stored), a
// shared file mapping (still shared with the file after restore), shared
// anonymous memory with data, and areas with madvise flags.
func TestMappings(t *testing.T) {
	testutil.RequireRoot(t)
	work := t.TempDir()
	priv := filepath.Join(work, "private.dat")
	shared := filepath.Join(work, "shared.dat")
	pattern := make([]byte, 1<<20)
	for i := range pattern {
		pattern[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(priv, pattern, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(shared, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	privHash := testutil.FileHash(t, priv)
	p := testutil.Start(t, testutil.Build(t, "mem"), priv, shared)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	sums0, _ := p.WaitLine(t, short, 0, "sums")
	p.WaitTick(t, short, 3)
	areas := map[string]uint64{}
	for _, k := range []string{"priv", "dontfork", "wipeonfork", "nohuge", "dontdump", "huge"} {
		v, err := strconv.ParseUint(strings.TrimPrefix(field(t, ready, k), "0x"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		areas[k] = v
	}
	vmflags := map[string]string{}
	for k, flag := range map[string]string{"dontfork": "dc", "wipeonfork": "wf", "nohuge": "nh", "dontdump": "dd", "huge": "hg"} {
		vmflags[k] = smapsFlags(t, p.PID, areas[k])
		if !slices.Contains(strings.Fields(vmflags[k]), flag) {
			t.Fatalf("%s area has VmFlags %q, no %s", k, vmflags[k], flag)
		}
	}

	dir, img := dumpKill(t, p, "")
	for _, v := range img.Process.VMAs {
		if v.Start == areas["priv"] {
			if v.Kind != core.VMAFile || v.Pages != 2 {
				t.Errorf("private file mapping in the image: kind %s with %d pages stored, want %s with the 2 written pages", v.Kind, v.Pages, core.VMAFile)
			}
		}
	}
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	for k, want := range vmflags {
		if got := smapsFlags(t, r.PID, areas[k]); got != want {
			t.Errorf("%s area: VmFlags %q after restore, %q before", k, got, want)
		}
	}
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	sums, _ := r.WaitLine(t, short, n, "sums")
	if sums != sums0 {
		t.Errorf("after restore %q, before dump %q", sums, sums0)
	}
	if !strings.Contains(sums, "page3=a3 page0=ok") {
		t.Errorf("private mapping after restore: %q", sums)
	}
	r.WaitLine(t, short, n, "wrote shared")
	if got := testutil.FileHash(t, priv); got != privHash {
		t.Errorf("the privately mapped file changed")
	}
	sb, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	if string(sb[:8]) != "shared-1" || string(sb[4096:4104]) != "shared-2" {
		t.Errorf("shared file mapping: file holds %q at 0 and %q at 4096, want shared-1 and shared-2 (a write after restore must reach the file)", sb[:8], sb[4096:4104])
	}
}

// nanosleep and friends: the system calls a sleeping process may be in.
var sleepCalls = []int{unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_POLL, unix.SYS_PPOLL, unix.SYS_PAUSE, unix.SYS_RT_SIGSUSPEND}

// TestSleeps: a process dumped inside nanosleep, an absolute
// clock_nanosleep, poll or pause finishes that call after restore as it
// would have without the dump: no EINTR, not early.
func TestSleeps(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sleeper")
	for _, tc := range []struct{ mode, want string }{
		{"rel", "slept rc=0 errno=0"},
		{"abs", "slept rc=0"},
		{"poll", "polled rc=0 errno=0"},
		{"pause", "paused rc=-1 errno=4 handled=1"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p := testutil.Start(t, bin, tc.mode)
			p.WaitLine(t, short, 0, "sleeping")
			testutil.WaitSyscall(t, short, p.PID, sleepCalls...)
			dir, img := dumpKill(t, p, "")
			if l := p.Lines(t); len(l) != 1 {
				t.Fatalf("the sleep ended before the dump: %q", l)
			}
			r := restoreOK(t, dir, p.Log)
			checkLayout(t, img, r.PID)
			if tc.mode == "pause" {
				testutil.WaitSyscall(t, short, r.PID, sleepCalls...)
				r.Signal(t, unix.SIGUSR1)
			}
			line, _ := r.WaitLine(t, long, 1, tc.want[:strings.IndexByte(tc.want, ' ')])
			if !strings.HasPrefix(line, tc.want) {
				t.Errorf("got %q, want %q...", line, tc.want)
			}
			if ws := r.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
				t.Errorf("restored process ended with %v, want exit 0 (%s)", ws, line)
			}
		})
	}
}

// TestFDKinds: eventfds with their counts, a sealed memfd with data and an
// offset, fds sharing one offset, a directory, a non-blocking pipe, a FIFO
// with data in it, and close-on-exec per fd, all at their numbers after
// restore.
func TestFDKinds(t *testing.T) {
	testutil.RequireRoot(t)
	work := t.TempDir()
	p := testutil.Start(t, testutil.Build(t, "fds"), filepath.Join(work, "shared-offset.txt"), work)
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	before := testutil.FDs(t, p.PID)
	dir, img := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	checkFDsSame(t, before, r.PID, 1, 2)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	got, _ := r.WaitLine(t, short, n, "check")
	want := fmt.Sprintf("check eventfd=12 sem=1 memfd=ok memfdpos=1000 seals=%d shared=ok pos=10,10,13,13 cloexec=10010011 pipenonblock=1 pipeempty=1 fifo=fifo-data-123", unix.F_SEAL_SHRINK)
	if got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
}

// TestCoreutilsSleep: `sleep 1000` comes back sleeping, with the same PID,
// command line and executable.
func TestCoreutilsSleep(t *testing.T) {
	testutil.RequireRoot(t)
	bin, err := exec.LookPath("sleep")
	if err != nil {
		testutil.Unavailable(t, "coreutils sleep: %v", err)
	}
	p := testutil.Start(t, bin, "1000")
	testutil.WaitSyscall(t, short, p.PID, sleepCalls...)
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
	before := testutil.FDs(t, p.PID)
	dir, img := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	checkFDsSame(t, before, r.PID)
	testutil.WaitSyscall(t, short, r.PID, sleepCalls...)
	c2, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.PID))
	e2, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", r.PID))
	if !bytes.Equal(c2, cmdline) || e2 != exe {
		t.Errorf("cmdline %q exe %q after restore, %q %q before", c2, e2, cmdline, exe)
	}
	if st, _ := testutil.State(r.PID); st != 'S' {
		t.Errorf("restored sleep is in state %c, want S", st)
	}
}

// TestPython: a python3 script keeps a counter and a dict in memory and
// appends a line per tick to a file it keeps open; after restore the
// counter and the dict carry on.
func TestPython(t *testing.T) {
	testutil.RequireRoot(t)
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		testutil.Unavailable(t, "python3: %v", err)
	}
	out := filepath.Join(t.TempDir(), "state.out")
	p := testutil.Start(t, py, filepath.Join(testutil.Testdata(), "state.py"), out)
	count := func() int {
		if _, err := os.Stat(out); err != nil {
			return 0
		}
		return len(testutil.LogLines(t, out)) - 1
	}
	testutil.WaitFor(t, long, "python to count to 10", func() bool { return count() >= 10 })
	before := testutil.FDs(t, p.PID)
	dir, _ := dumpKill(t, p, "")
	last := count()
	r := restoreOK(t, dir, p.Log)
	// python may change its memory layout while it runs: the layout is not
	// compared, the fds are.
	checkFDsSame(t, before, r.PID, 1, 2, fdOf(t, before, out))
	testutil.WaitFor(t, long, "python to count on after restore", func() bool { return count() >= last+10 })
	r.Kill(t)
	lines := testutil.LogLines(t, out)
	if lines[0] != "ready" {
		t.Fatalf("first line %q", lines[0])
	}
	total := 0
	for i, l := range lines[1:] {
		n := i + 1
		total += n * n
		if want := fmt.Sprintf("%d %d", n, total); l != want {
			t.Fatalf("line %d: %q, want %q (restored at %d)", n, l, want, last)
		}
	}
	if out, _ := os.ReadFile(p.Log); len(out) > 0 {
		t.Errorf("python wrote to stderr:\n%s", out)
	}
}

func fdOf(t *testing.T, fds map[int]testutil.FDView, path string) int {
	t.Helper()
	for n, v := range fds {
		if v.Target == path {
			return n
		}
	}
	t.Fatalf("no fd for %s", path)
	return -1
}

// TestLeaveRunning: with LeaveRunning the original runs on, untouched and
// untraced; the image then restores (once the original is gone) to the
// state at the dump, not to the state the original reached later.
func TestLeaveRunning(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "16")
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 5)
	before := testutil.Take(t, p.PID)
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, LeaveRunning: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.LeftRunning {
		t.Errorf("report says the process was not left running")
	}
	testutil.RequireRunning(t, p.PID)
	after := testutil.Take(t, p.PID)
	if d := before.Diff(after, 1, 2); d != "" {
		t.Errorf("the original changed across a dump that left it running:\n%s", d)
	}
	at := p.LastTick(t)
	p.WaitTick(t, short, at+5)

	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	dumped := tickAtOffset(t, p.Log, img, 1)
	p.Kill(t)
	killedAt := len(p.Lines(t))
	lastOrig := p.LastTick(t)
	if lastOrig <= dumped {
		t.Fatalf("the original did not run on after the dump (tick %d at dump, %d at kill)", dumped, lastOrig)
	}
	r := restoreOK(t, dir, p.Log)
	testutil.WaitFor(t, short, "ticks of the restored process", func() bool { return len(r.Lines(t)) > killedAt+3 })
	got := testutil.Ticks(r.Lines(t)[killedAt:])
	for i, n := range got {
		if n != dumped+1+i {
			t.Fatalf("restored process ticks %v, want %d, %d, ... (the state at the dump)", got, dumped+1, dumped+2)
		}
	}
}

// tickAtOffset returns the last tick the log held at the offset the image
// recorded for fd (the log is O_APPEND, so that is its size at the dump).
func tickAtOffset(t *testing.T, log string, img *core.Image, fd int) int {
	t.Helper()
	for _, f := range img.Process.FDs {
		if f.FD != fd {
			continue
		}
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		if f.Pos > int64(len(b)) || f.Pos == 0 {
			t.Fatalf("fd %d offset %d in the image, log has %d bytes", fd, f.Pos, len(b))
		}
		ticks := testutil.Ticks(strings.Split(string(b[:f.Pos]), "\n"))
		return ticks[len(ticks)-1]
	}
	t.Fatalf("no fd %d in the image", fd)
	return 0
}

// TestAttributes: umask, cwd, rlimits (a soft limit below its hard one),
// comm, personality, credentials (and whether its user may trace it:
// dumpable), the process group and the session
// survive: for a process in a group of its own, one leading its own
// session, and one running as another user.
func TestAttributes(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "creds")
	for _, tc := range []struct {
		name string
		opts testutil.Options
	}{
		{"process group", testutil.Options{Setpgid: true}},
		{"session", testutil.Options{Setsid: true}},
		{"other user", testutil.Options{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534, 100}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A directory every user can enter (t.TempDir's parent is 0700).
			cwd, err := os.MkdirTemp("", "migrate-cwd-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(cwd) })
			if err := os.Chmod(cwd, 0o777); err != nil {
				t.Fatal(err)
			}
			tc.opts.Dir = cwd
			p := testutil.StartWith(t, tc.opts, bin, cwd)
			p.WaitLine(t, short, 0, "ready")
			creds0, _ := p.WaitLine(t, short, 0, "creds")
			p.WaitTick(t, short, 3)
			view := func(pid int) map[string]string {
				m := map[string]string{}
				for _, f := range []string{"Umask", "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"} {
					m[f] = testutil.StatusField(t, pid, f)
				}
				for _, f := range []string{"limits", "comm", "personality"} {
					b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
					if err != nil {
						t.Fatal(err)
					}
					m[f] = string(b)
				}
				// Its user may trace a dumpable process, whose /proc
				// files are then the user's, not root's.
				var st unix.Stat_t
				if err := unix.Stat(fmt.Sprintf("/proc/%d/stat", pid), &st); err != nil {
					t.Fatal(err)
				}
				m["owner of /proc/PID/stat"] = strconv.Itoa(int(st.Uid))
				m["cwd"], _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
				m["root"], _ = os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
				pgid, sid := testutil.PGID(t, pid)
				m["pgid"] = strconv.Itoa(pgid)
				m["sid"] = strconv.Itoa(sid)
				return m
			}
			before := view(p.PID)
			if !strings.Contains(creds0, "nofile=200/") || !strings.Contains(creds0, "umask=027") {
				t.Fatalf("workload did not set its attributes: %s", creds0)
			}
			dir, img := dumpKill(t, p, "")
			r, rep := restoreWithReport(t, dir, p.Log)
			checkLayout(t, img, r.PID)
			after := view(r.PID)
			for k, v := range before {
				if after[k] == v {
					continue
				}
				// A session led by a process outside the image cannot be
				// counted on: the restored process may get a session of
				// its own, but the restore must say so.
				if k == "sid" && img.Process.SID != img.Process.PID && after[k] == strconv.Itoa(r.PID) && len(rep.Warnings) > 0 {
					continue
				}
				t.Errorf("%s: %q before the dump, %q after restore", k, v, after[k])
			}
			n := len(r.Lines(t))
			r.Signal(t, unix.SIGUSR1)
			creds, _ := r.WaitLine(t, short, n, "creds")
			if creds != creds0 {
				t.Errorf("the restored process sees\n%s\nit saw before the dump\n%s", creds, creds0)
			}
		})
	}
}

// TestTwice: a restored process can itself be dumped and restored, and
// still holds its memory and counts on: nothing the first restore left
// (layout, mm fields, fds) gets in the way of the second.
func TestTwice(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "32", "-b", "8")
	ready, _ := p.WaitLine(t, long, 0, "ready")
	sum0 := field(t, ready, "sum")
	p.WaitTick(t, short, 3)
	dir, _ := dumpKill(t, p, "")
	r1 := restoreOK(t, dir, p.Log)
	r1.WaitTick(t, short, r1.LastTick(t)+3)

	dir2, img2 := dumpKill(t, r1, "")
	last := r1.LastTick(t)
	r2 := restoreOK(t, dir2, p.Log)
	checkLayout(t, img2, r2.PID)
	r2.WaitTick(t, short, last+3)
	n := len(r2.Lines(t))
	r2.Signal(t, unix.SIGUSR1)
	sum, _ := r2.WaitLine(t, long, n, "sum ")
	if got := strings.TrimPrefix(sum, "sum "); got != sum0 {
		t.Errorf("heap checksum after two restores %s, at start %s", got, sum0)
	}
	if brk, _ := r2.WaitLine(t, short, n, "brk "); !strings.HasSuffix(brk, " ok") {
		t.Errorf("malloc after two restores: %s", brk)
	}
	r2.WaitTick(t, short, r2.LastTick(t)+2)
	checkTicksContinuous(t, r2.Lines(t), last+3)
}

// TestCodecs: images written with each page codec restore to the same
// memory.
func TestCodecs(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "counter")
	for _, codec := range []string{"none", "s2", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			p := testutil.Start(t, bin, "-m", "24", "-b", "4")
			ready, _ := p.WaitLine(t, long, 0, "ready")
			p.WaitTick(t, short, 2)
			dir, img := dumpKill(t, p, codec)
			if img.Pages.Codec != codec {
				t.Errorf("image codec %q, want %q", img.Pages.Codec, codec)
			}
			r := restoreOK(t, dir, p.Log)
			n := len(r.Lines(t))
			r.Signal(t, unix.SIGUSR1)
			sum, _ := r.WaitLine(t, long, n, "sum ")
			if got, want := strings.TrimPrefix(sum, "sum "), field(t, ready, "sum"); got != want {
				t.Errorf("heap checksum after restore %s, before dump %s", got, want)
			}
		})
	}
}

// TestSparseMemory: of a 256 MiB area only every 16th page was touched:
// only those pages are stored, and the restored area is as large as the
// original, with the untouched pages still untouched (no memory spent).
func TestSparseMemory(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-u", "256")
	line, _ := p.WaitLine(t, short, 0, "sparse")
	addr, err := strconv.ParseUint(strings.TrimPrefix(field(t, line, "addr"), "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	touched, _ := strconv.ParseUint(field(t, line, "touched"), 10, 64)
	p.WaitTick(t, short, 2)
	dir, img := dumpKill(t, p, "")
	found := false
	for _, v := range img.Process.VMAs {
		if v.Start == addr {
			found = true
			if v.Len() != 256<<20 || v.Pages != touched {
				t.Errorf("sparse area in the image: %d bytes with %d pages stored, want %d bytes with the %d touched pages", v.Len(), v.Pages, 256<<20, touched)
			}
		}
	}
	if !found {
		t.Fatalf("no area at %#x in the image", addr)
	}
	if max := (touched + 4096) * 4096; uint64(img.Pages.Size) > max {
		t.Errorf("page data of %d bytes for %d touched pages", img.Pages.Size, touched)
	}
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	if rss := smapsField(t, r.PID, addr, "Rss:"); rss > (touched+64)*4 {
		t.Errorf("restored sparse area has %d KiB resident, want about %d KiB (only the touched pages)", rss, touched*4)
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
}

// smapsField returns a kB field ("Rss:") of the area starting at addr.
func smapsField(t *testing.T, pid int, addr uint64, name string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		var start, end uint64
		if n, _ := fmt.Sscanf(l, "%x-%x ", &start, &end); n == 2 {
			in = start == addr
			continue
		}
		if v, ok := strings.CutPrefix(l, name); ok && in {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no area at %#x in process %d", addr, pid)
	return 0
}

// TestThreads: a process with three worker threads, each counting under
// its own mutex, comes back with every thread at its TID, and all of them
// count on.
func TestThreads(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "threads"))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 5)
	tasks := func(pid int) []string {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	before := tasks(p.PID)
	if len(before) != 4 {
		t.Fatalf("workload has tasks %v, want 4 (%s)", before, ready)
	}
	dir, img := dumpKill(t, p, "")
	counts := func(line string) [3]int {
		var tick int
		var c [3]int
		fmt.Sscanf(line, "tick %d %d %d %d", &tick, &c[0], &c[1], &c[2])
		return c
	}
	lines := p.Lines(t)
	atDump := counts(lines[len(lines)-1])
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	checkLayout(t, img, r.PID)
	if got := tasks(r.PID); !slices.Equal(got, before) {
		t.Errorf("restored tasks %v, want %v (the same TIDs)", got, before)
	}
	r.WaitTick(t, short, last+10)
	checkTicksContinuous(t, r.Lines(t), last+10)
	lines = r.Lines(t)
	now := counts(lines[len(lines)-1])
	for i := range now {
		if now[i] <= atDump[i] {
			t.Errorf("worker %d counted %d at the dump and %d now: it does not run after restore", i, atDump[i], now[i])
		}
	}
}

// startFiles starts the files workload in a directory of its own, on a
// data file of 1000 numbered lines; it returns the process once ready,
// the path of its output file (written at its offset, not O_APPEND) and
// its ready line.
func startFiles(t *testing.T) (p *testutil.Proc, out, ready string) {
	t.Helper()
	work := t.TempDir()
	data := filepath.Join(work, "data.txt")
	var b bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&b, "line %04d\n", i)
	}
	if err := os.WriteFile(data, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(work, "out.txt")
	p = testutil.Start(t, testutil.Build(t, "files"), data, out, work)
	ready, _ = p.WaitLine(t, short, 0, "ready")
	return p, out, ready
}
