package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

const (
	// Waits are generous: the machines are small and shared. Nothing here
	// asserts speed.
	short = 10 * time.Second
	long  = 60 * time.Second
)

// testLogger sends the engine's log to the test log, shown on failure.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// dumpKill dumps p into a fresh directory (the default: the process is
// killed), reaps p, and returns the directory and the image.
func dumpKill(t *testing.T, p *testutil.Proc, codec string) (string, *core.Image) {
	t.Helper()
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Codec: codec, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("dump %d: %v", p.PID, err)
	}
	if rep.PID != p.PID || rep.LeftRunning {
		t.Fatalf("dump report %+v", rep)
	}
	p.Reap(t)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch e.Name() {
		case core.MetaFile, core.PagesFile, core.FilesDir:
		default:
			t.Errorf("stray file %s in the image directory after the dump", e.Name())
		}
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatalf("read the image just written: %v", err)
	}
	if img.NetLock != "" {
		// A test that does not restore must not leave the lock behind:
		// it would drop other tests' packets to those ports.
		t.Cleanup(func() { netlock.Remove("", img.NetLock) })
	}
	if img.Process.PID != p.PID {
		t.Fatalf("image of pid %d, dumped %d", img.Process.PID, p.PID)
	}
	return dir, img
}

// restoreOK restores the image in dir and checks what every restore must
// give: the same PID, running, not traced, a child of the test process (its
// subreaper), no husk or other new child left, and only the fds of the
// image. log is the workload's log file.
func restoreOK(t *testing.T, dir, log string) *testutil.Proc {
	t.Helper()
	p, _ := restoreWithReport(t, dir, log)
	return p
}

// restoreWithReport is restoreOK that also returns the restore's report.
func restoreWithReport(t *testing.T, dir, log string) (*testutil.Proc, *target.RestoreReport) {
	t.Helper()
	return restoreOptsReport(t, dir, log, target.RestoreOptions{})
}

// restoreOptsReport is restoreWithReport with the options opts (Dir,
// Logger and Check set).
func restoreOptsReport(t *testing.T, dir, log string, opts target.RestoreOptions) (*testutil.Proc, *target.RestoreReport) {
	t.Helper()
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	kids := testutil.Children()
	// Every restore of the tests is checked against its image.
	opts.Dir, opts.Logger, opts.Check = dir, testLogger(t), true
	rep, err := target.Restore(context.Background(), opts)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	for _, w := range rep.Warnings {
		t.Logf("restore warning: %s", w)
	}
	pid := img.Process.PID
	// Adopt first, so that the process is reaped whatever fails below.
	var p *testutil.Proc
	if _, err := testutil.State(pid); err == nil && testutil.Parent(t, pid) == os.Getpid() {
		p = testutil.Adopt(t, pid, log)
	}
	if rep.PID != pid {
		t.Fatalf("restore reports pid %d, the image has %d", rep.PID, pid)
	}
	if p == nil {
		t.Fatalf("restored process %d is missing or not a child of the test process (the subreaper)", pid)
	}
	checkRunningUntraced(t, pid)
	want := append(slices.Clone(kids), pid)
	slices.Sort(want)
	if got := testutil.Children(); !slices.Equal(got, want) {
		t.Errorf("children of the test process after restore: %v, want %v (a husk left behind?)", got, want)
	}
	checkFDsMatchImage(t, img, pid)
	return p, rep
}

// waitPaused waits until the sleeper pid (modes pause, pause2, landlock,
// ...) sleeps in pause(). It says "sleeping" just before the call, so a
// SIGUSR1 sent on that line alone could be handled before the call, which
// would then wait for ever (a dump that seized it in between made that
// window wide enough to hit on a loaded machine).
func waitPaused(t *testing.T, pid int) {
	t.Helper()
	testutil.WaitSyscall(t, short, pid, unix.SYS_PAUSE)
}

// checkRunningUntraced checks that pid runs on its own: not stopped, not
// traced.
func checkRunningUntraced(t *testing.T, pid int) {
	t.Helper()
	testutil.RequireRunning(t, pid)
	if tr := testutil.StatusField(t, pid, "TracerPid"); tr != "0" {
		t.Errorf("restored process %d is still traced by %s", pid, tr)
	}
}

// checkFDsMatchImage checks that pid has exactly the fds of the image, with
// their flags (close-on-exec included): no fd of the restorer is left.
func checkFDsMatchImage(t *testing.T, img *core.Image, pid int) {
	t.Helper()
	got := testutil.FDs(t, pid)
	want := map[int]core.FD{}
	for _, f := range img.Process.FDs {
		want[f.FD] = f
	}
	for n, v := range got {
		f, ok := want[n]
		if !ok {
			if !transientFD(pid, n, v.Target) {
				t.Errorf("restored process has fd %d (%s) that the image does not have", n, v.Target)
			}
			continue
		}
		flags, err := strconv.ParseInt(v.Flags, 8, 64)
		if err != nil {
			t.Fatalf("fd %d flags %q: %v", n, v.Flags, err)
		}
		wantFlags := int64(f.Flags)
		if f.Cloexec {
			wantFlags |= unix.O_CLOEXEC
		}
		// O_LARGEFILE is forced by the kernel on 64-bit opens.
		if flags&^unix.O_LARGEFILE != wantFlags&^unix.O_LARGEFILE {
			t.Errorf("fd %d (%s): flags %#o, image says %#o", n, v.Target, flags, wantFlags)
		}
	}
	for n, f := range want {
		if _, ok := got[n]; !ok {
			t.Errorf("fd %d (%s) of the image is missing after restore", n, f.Kind)
		}
	}
}

// checkFDsSame compares the fd table of a restored process with the one the
// original had: same numbers, same kind of target, same flags, and the same
// offsets except for the fds in moving.
func checkFDsSame(t *testing.T, before map[int]testutil.FDView, pid int, moving ...int) {
	t.Helper()
	after := testutil.FDs(t, pid)
	for n, b := range before {
		a, ok := after[n]
		if !ok {
			t.Errorf("fd %d (%s) missing after restore", n, b.Target)
			continue
		}
		if testutil.NormTarget(a.Target) != testutil.NormTarget(b.Target) {
			t.Errorf("fd %d: %s before, %s after restore", n, b.Target, a.Target)
		}
		if a.Flags != b.Flags {
			t.Errorf("fd %d (%s): flags %s before, %s after restore", n, b.Target, b.Flags, a.Flags)
		}
		if !slices.Contains(moving, n) && a.Pos != b.Pos {
			t.Errorf("fd %d (%s): pos %s before, %s after restore", n, b.Target, b.Pos, a.Pos)
		}
	}
	for n, a := range after {
		if _, ok := before[n]; !ok && !transientFD(pid, n, a.Target) {
			t.Errorf("fd %d (%s) appeared after restore", n, a.Target)
		}
	}
}

// transientFD says whether fd n of pid, seen pointing at target, is one
// the running process opened for a moment and closed again (redis reads
// /proc/PID/stat now and then): an fd left by the restorer stays.
func transientFD(pid, n int, target string) bool {
	path := fmt.Sprintf("/proc/%d/fd/%d", pid, n)
	return testutil.Poll(short, func() bool {
		now, err := os.Readlink(path)
		return err != nil || now != target
	})
}

// segment is a memory area as /proc/PID/maps shows it.
type segment struct {
	start, end uint64
	perms      string // "rw-p"
	path       string
}

func (s segment) String() string {
	return fmt.Sprintf("%x-%x %s %s", s.start, s.end, s.perms, s.path)
}

func readSegments(t *testing.T, pid int) []segment {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []segment
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			t.Fatalf("maps line %q", l)
		}
		var s segment
		if _, err := fmt.Sscanf(f[0], "%x-%x", &s.start, &s.end); err != nil {
			t.Fatalf("maps line %q: %v", l, err)
		}
		s.perms = f[1]
		if len(f) > 5 {
			s.path = strings.Join(f[5:], " ")
		}
		if s.path == "[vsyscall]" {
			continue // a fixed kernel area, the same in every process
		}
		out = append(out, s)
	}
	return out
}

func imageSegments(img *core.Image) []segment {
	var out []segment
	for _, v := range img.Process.VMAs {
		perms := []byte("---p")
		if v.Prot&unix.PROT_READ != 0 {
			perms[0] = 'r'
		}
		if v.Prot&unix.PROT_WRITE != 0 {
			perms[1] = 'w'
		}
		if v.Prot&unix.PROT_EXEC != 0 {
			perms[2] = 'x'
		}
		if v.Flags&unix.MAP_SHARED != 0 {
			perms[3] = 's'
		}
		s := segment{start: v.Start, end: v.End, perms: string(perms), path: v.Name}
		if v.File != nil {
			s.path = v.File.Path
			if v.File.Deleted {
				s.path += " (deleted)"
			}
		}
		out = append(out, s)
	}
	return out
}

// comparable merges neighbouring areas that the kernel may or may not have
// merged, and drops names of anonymous shared memory, whose inode differs.
func coalesce(segs []segment) []segment {
	var out []segment
	for _, s := range segs {
		if strings.HasPrefix(s.path, "/dev/zero") || strings.HasPrefix(s.path, "/SYSV") {
			s.path = "[shared anon]"
		}
		if n := len(out); n > 0 && out[n-1].end == s.start && out[n-1].perms == s.perms && out[n-1].path == s.path {
			out[n-1].end = s.end
			continue
		}
		out = append(out, s)
	}
	return out
}

// checkLayout checks that the restored process has the memory layout of the
// image: the same areas with the same protections and files, and nothing
// else (no scratch area of the restorer left). Only for workloads that do
// not change their layout while they run.
func checkLayout(t *testing.T, img *core.Image, pid int) {
	t.Helper()
	want := coalesce(imageSegments(img))
	got := coalesce(readSegments(t, pid))
	if slices.Equal(got, want) {
		return
	}
	var d []string
	for _, s := range want {
		if !slices.Contains(got, s) {
			d = append(d, "- "+s.String())
		}
	}
	for _, s := range got {
		if !slices.Contains(want, s) {
			d = append(d, "+ "+s.String())
		}
	}
	t.Errorf("memory layout of restored process %d differs from the image (- image, + restored):\n%s", pid, strings.Join(d, "\n"))
}

// checkTicksContinuous checks that the ticks in lines run 1, 2, 3, ...
// without a gap, a repeat or a restart, and that there are more than
// atLeast of them.
func checkTicksContinuous(t *testing.T, lines []string, atLeast int) {
	t.Helper()
	ticks := testutil.Ticks(lines)
	for i, n := range ticks {
		if n != i+1 {
			t.Fatalf("tick %d at position %d of the log; ticks must run on without gap or restart:\n%v", n, i+1, around(ticks, i))
		}
	}
	if len(ticks) <= atLeast {
		t.Fatalf("only %d ticks logged, want more than %d", len(ticks), atLeast)
	}
}

func around(ticks []int, i int) []int {
	return ticks[max(0, i-5):min(len(ticks), i+5)]
}

// field returns the value of key=value in a log line.
func field(t testing.TB, line, key string) string {
	t.Helper()
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	t.Fatalf("no %s= in %q", key, line)
	return ""
}

// requireNothingLeft checks what a failed restore leaves: no process with
// the image's PID, and the test process's children as they were (kids,
// taken before the restore).
func requireNothingLeft(t *testing.T, pid int, kids []int) {
	t.Helper()
	testutil.WaitFor(t, short, "the half-built process to be gone", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err != nil
	})
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children after the failed restore: %v, before %v", got, kids)
	}
}

// dumpTreeKill dumps p with its descendants into a new directory (the
// dump kills them), reaps p and the orphans kids (its children, which the
// test process, a subreaper, inherits), and returns the directory and
// the image.
func dumpTreeKill(t *testing.T, p *testutil.Proc, kids ...int) (string, *core.Image) {
	t.Helper()
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump %d with its tree: %v", p.PID, err)
	}
	p.Reap(t)
	for _, k := range kids {
		testutil.ReapOrphan(t, k)
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatalf("read the image just written: %v", err)
	}
	return dir, img
}
