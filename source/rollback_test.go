package source

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// victim is a running counter whose untouched state a failed dump must
// leave as it was.
type victim struct {
	p      *testutil.Proc
	snap   *testutil.Snapshot // /proc view: maps, fds, tracer, signal masks
	state  string             // the process's own view: handlers, mask, altstack
	fds    []string           // the test process's own fds
	ticked int
}

// startVictim runs the counter workload with args and records its state.
func startVictim(t *testing.T, args ...string) *victim {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "counter"), args...)
	p.WaitLine(t, 2*short, 0, "ready")
	p.WaitTick(t, short, 3)
	v := &victim{p: p}
	v.state = v.askState(t)
	v.snap = testutil.Take(t, p.PID)
	v.fds = ownFDs(t)
	v.ticked = p.LastTick(t)
	return v
}

// askState has the process print its signal state (SIGUSR2).
func (v *victim) askState(t *testing.T) string {
	t.Helper()
	n := len(v.p.Lines(t))
	v.p.Signal(t, unix.SIGUSR2)
	line, _ := v.p.WaitLine(t, short, n, "state ")
	return line
}

// requireUntouched checks that the process runs on exactly as it was: not
// stopped or traced, the same memory layout (no scratch page), fds, signal
// handlers, mask, pending signals and altstack, and still counting; that
// the dumping process leaked no fd; and that the image directory is empty.
func (v *victim) requireUntouched(t *testing.T, dir string) {
	t.Helper()
	// When Dump returns, the process must already run untraced.
	st, _ := testutil.State(v.p.PID)
	tracer := testutil.StatusField(t, v.p.PID, "TracerPid")
	if (st != 'R' && st != 'S') || tracer != "0" {
		t.Errorf("when the failed dump returned, the process was in state %c, traced by %s; want it running, untraced", st, tracer)
		// See what else is wrong once the kernel lets go of it.
		testutil.Poll(short, func() bool {
			st, _ := testutil.State(v.p.PID)
			return testutil.StatusField(t, v.p.PID, "TracerPid") == "0" && st != 't'
		})
	}
	testutil.RequireRunning(t, v.p.PID)
	if d := v.snap.Diff(testutil.Take(t, v.p.PID), 1, 2); d != "" {
		t.Errorf("the process changed across the failed dump:\n%s", d)
	}
	v.p.WaitTick(t, short, v.p.LastTick(t)+3)
	if s := v.askState(t); s != v.state {
		t.Errorf("signal state seen by the process changed:\nbefore %s\nafter  %s", v.state, s)
	}
	if fds := ownFDs(t); !slices.Equal(fds, v.fds) {
		t.Errorf("the dumping process's fds changed (a leak?):\nbefore %v\nafter  %v", v.fds, fds)
	}
	if ents := dirEntries(t, dir); len(ents) != 0 {
		t.Errorf("the failed dump left %v in the image directory", ents)
	}
}

// ownFDs lists the test process's fds, but for the Go runtime's netpoller,
// which it opens once on first use.
func ownFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the fd of ReadDir itself
		}
		if target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]" {
			continue
		}
		out = append(out, e.Name()+" -> "+target)
	}
	slices.Sort(out)
	return out
}

var dumpStages = []string{stageSeized, stageScratch, stageInjected, stageMemory, stageMeta}

// TestRollbackAtEachStage fails a dump at each stage, once with an error
// and once by cancelling its context (what SIGINT to migrate does): the
// dump fails, and the process runs on exactly as it was, with nothing left
// in the image directory.
func TestRollbackAtEachStage(t *testing.T) {
	testutil.RequireRoot(t)
	for _, stage := range dumpStages {
		for _, how := range []string{"error", "cancel"} {
			t.Run(stage+"/"+how, func(t *testing.T) {
				v := startVictim(t, "-m", "8", "-b", "1", "-t", "10")
				dir := t.TempDir()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				injected := fmt.Errorf("failure injected at stage %q", stage)
				var seen []string
				opts := DumpOptions{PID: v.p.PID, Dir: dir, Logger: fixtureLogger(t)}
				opts.testHook = func(s string) error {
					seen = append(seen, s)
					if s != stage {
						return nil
					}
					if how == "cancel" {
						cancel()
						return nil
					}
					return injected
				}
				rep, err := Dump(ctx, opts)
				if !slices.Contains(seen, stage) {
					t.Fatalf("stage %q never reached (stages seen: %v; dump error: %v)", stage, seen, err)
				}
				if err == nil {
					t.Fatalf("dump succeeded (%+v) although it was %s at stage %q; the process was killed", rep, map[string]string{"error": "failed", "cancel": "cancelled"}[how], stage)
				}
				switch how {
				case "error":
					if !errors.Is(err, injected) {
						t.Errorf("dump error %v does not wrap the injected failure", err)
					}
				case "cancel":
					if !errors.Is(err, context.Canceled) {
						t.Errorf("dump error %v is not context.Canceled", err)
					}
				}
				v.requireUntouched(t, dir)
			})
		}
	}
}

// TestRollbackUnsupportedFD: an fd of a kind migrate cannot dump (a
// netlink socket, a perf event, a pipe whose other end is held by
// another process) makes the dump fail with an *UnsupportedFDError naming
// that fd, before anything was changed: the process is untouched.
func TestRollbackUnsupportedFD(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ kind, prefix string }{
		{"netlink", "socket:"},
		{"perf", "anon_inode:[perf_event]"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			v := startVictim(t, "-s", tc.kind)
			line, _ := v.p.WaitLine(t, short, 0, "unsupported fd")
			var fd int
			if _, err := fmt.Sscanf(line, "unsupported fd %d", &fd); err != nil {
				t.Fatal(err)
			}
			requireUnsupported(t, v, fd, tc.prefix)
		})
	}
	t.Run("pipe to another process", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		p := testutil.StartWith(t, testutil.Options{Stdout: w}, testutil.Build(t, "counter"))
		w.Close()
		// The counter writes its lines to the pipe: read them (the pipe
		// must not fill up) and note when it is counting.
		var ticking atomic.Bool
		go func() {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "tick 3") {
					ticking.Store(true)
				}
			}
		}()
		testutil.WaitFor(t, short, "the counter to count", ticking.Load)
		v := &victim{p: p, snap: testutil.Take(t, p.PID), fds: ownFDs(t)}
		dir := t.TempDir()
		_, err = Dump(context.Background(), DumpOptions{PID: p.PID, Dir: dir, Logger: fixtureLogger(t)})
		var ue *UnsupportedFDError
		if !errors.As(err, &ue) {
			t.Fatalf("dump error %v (%T), want *UnsupportedFDError", err, err)
		}
		if ue.FD != 1 || ue.PID != p.PID || !strings.HasPrefix(ue.Kind, "pipe:") {
			t.Errorf("UnsupportedFDError %+v, want pid %d fd 1 kind pipe:[...]", ue, p.PID)
		}
		testutil.RequireRunning(t, p.PID)
		if d := v.snap.Diff(testutil.Take(t, p.PID), 1); d != "" {
			t.Errorf("the process changed across the refused dump:\n%s", d)
		}
		if ents := dirEntries(t, dir); len(ents) != 0 {
			t.Errorf("the refused dump left %v in the image directory", ents)
		}
	})
}

// requireUnsupported dumps v, wants an *UnsupportedFDError for fd, found
// before the process was frozen, and the process untouched.
func requireUnsupported(t *testing.T, v *victim, fd int, kindPrefix string) {
	t.Helper()
	dir := t.TempDir()
	var stages []string
	hook := func(stage string) error { stages = append(stages, stage); return nil }
	_, err := Dump(context.Background(), DumpOptions{PID: v.p.PID, Dir: dir, Logger: fixtureLogger(t), testHook: hook})
	if len(stages) > 0 {
		t.Errorf("the dump went through %v before refusing the fd: it must refuse before the freeze", stages)
	}
	var ue *UnsupportedFDError
	if !errors.As(err, &ue) {
		t.Fatalf("dump error %v (%T), want *UnsupportedFDError", err, err)
	}
	if ue.FD != fd || ue.PID != v.p.PID || !strings.HasPrefix(ue.Kind, kindPrefix) {
		t.Errorf("UnsupportedFDError %+v, want pid %d fd %d kind %s...", ue, v.p.PID, fd, kindPrefix)
	}
	v.requireUntouched(t, dir)
}

// TestRollbackDiskFull: the image directory is a 2 MiB tmpfs and the
// process has 64 MiB of memory (stored uncompressed): the dump fails with
// ENOSPC, leaves nothing behind, and the process is untouched.
func TestRollbackDiskFull(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		testutil.Unavailable(t, "cannot mount a small tmpfs for the full-disk test: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	v := startVictim(t, "-m", "64")
	_, err := Dump(context.Background(), DumpOptions{PID: v.p.PID, Dir: dir, Codec: "none", Logger: fixtureLogger(t)})
	if err == nil {
		t.Fatal("dump of 64 MiB into a 2 MiB tmpfs succeeded")
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("dump error %v does not wrap ENOSPC", err)
	}
	v.requireUntouched(t, dir)
}

// TestRollbackThenDump: after a failed dump the same process dumps fine,
// and the image is complete.
func TestRollbackThenDump(t *testing.T) {
	testutil.RequireRoot(t)
	v := startVictim(t, "-m", "4")
	dir := t.TempDir()
	opts := DumpOptions{PID: v.p.PID, Dir: dir, Logger: fixtureLogger(t)}
	opts.testHook = func(s string) error {
		if s == stageMemory {
			return errors.New("injected")
		}
		return nil
	}
	if _, err := Dump(context.Background(), opts); err == nil {
		t.Fatal("dump with a failing hook succeeded")
	}
	v.requireUntouched(t, dir)
	opts.testHook = nil
	opts.LeaveRunning = true
	rep, err := Dump(context.Background(), opts)
	if err != nil {
		t.Fatalf("second dump: %v", err)
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if img.Process.PID != v.p.PID || rep.Pages == 0 || img.Pages.Pages != rep.Pages {
		t.Errorf("image of pid %d with %d pages, report %+v", img.Process.PID, img.Pages.Pages, rep)
	}
	testutil.RequireRunning(t, v.p.PID)
	if d := v.snap.Diff(testutil.Take(t, v.p.PID), 1, 2); d != "" {
		t.Errorf("the process changed across a dump that left it running:\n%s", d)
	}
}

// TestSignalArrivingDuringDump: a signal sent to the process while it is
// frozen (before the injected calls run) is neither lost nor delivered
// twice, whether the dump fails or leaves the process running.
func TestSignalArrivingDuringDump(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name         string
		leaveRunning bool
		failAt       string
	}{
		{"rollback", false, stageMeta},
		{"leave running", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := startVictim(t, "-m", "2")
			n := len(v.p.Lines(t))
			dir := t.TempDir()
			opts := DumpOptions{PID: v.p.PID, Dir: dir, LeaveRunning: tc.leaveRunning, Logger: fixtureLogger(t)}
			opts.testHook = func(s string) error {
				switch s {
				case stageSeized:
					// SIGUSR1 makes the counter print "sum" once.
					if err := unix.Kill(v.p.PID, unix.SIGUSR1); err != nil {
						t.Errorf("kill: %v", err)
					}
				case tc.failAt:
					return errors.New("injected")
				}
				return nil
			}
			_, err := Dump(context.Background(), opts)
			if (err != nil) != (tc.failAt != "") {
				t.Fatalf("dump error %v", err)
			}
			testutil.Poll(short, func() bool {
				st, _ := testutil.State(v.p.PID)
				return st != 't'
			})
			v.p.WaitLine(t, short, n, "sum ")
			v.p.WaitTick(t, short, v.p.LastTick(t)+5)
			sums := 0
			for _, l := range v.p.Lines(t)[n:] {
				if strings.HasPrefix(l, "sum ") {
					sums++
				}
			}
			if sums != 1 {
				t.Errorf("SIGUSR1 sent during the dump was handled %d times, want once", sums)
			}
			if tc.failAt != "" {
				v.requireUntouched(t, dir)
			}
		})
	}
}

// TestRefuseFileLocks: a process holding a lease (which no restore takes
// again), or, for a live migration, a POSIX, flock or OFD lock (the
// original holds it until it ends) is refused before it is frozen, naming
// the fd, and runs on untouched. (Dump and restore carry the locks:
// e2e TestFileLocksKept.)
func TestRefuseFileLocks(t *testing.T) {
	testutil.RequireRoot(t)
	for _, kind := range []string{"posix", "flock", "ofd", "lease"} {
		t.Run(kind, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "locked")
			if err := os.WriteFile(file, make([]byte, 100), 0o644); err != nil {
				t.Fatal(err)
			}
			p := testutil.Start(t, testutil.Build(t, "locks"), kind, file)
			line, _ := p.WaitLine(t, short, 0, "ready")
			var pid, fd int
			if _, err := fmt.Sscanf(line, "ready pid=%d fd=%d", &pid, &fd); err != nil {
				t.Fatal(err)
			}
			p.WaitTick(t, short, 2)
			var stages []string
			hook := func(stage string) error { stages = append(stages, stage); return nil }
			_, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: fixtureLogger(t), testHook: hook, live: kind != "lease"})
			var ue *UnsupportedFDError
			if !errors.As(err, &ue) || ue.FD != fd || ue.PID != p.PID {
				t.Fatalf("dump of a process holding a %s lock: %v (%T), want an UnsupportedFDError for fd %d", kind, err, err, fd)
			}
			if len(stages) > 0 {
				t.Errorf("the dump went through %v before refusing the lock", stages)
			}
			testutil.RequireRunning(t, p.PID)
			p.WaitTick(t, short, p.LastTick(t)+2)
		})
	}
}
