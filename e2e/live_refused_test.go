package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLiveRefusedBeforePrecopy (issue 13: "a process with an fd migrate
// cannot move must not be frozen"): for every kind of fd a live migration
// still refuses, `migrate --to` fails with an *UnsupportedFDError naming
// the fd before anything started: no round began (Notify and Progress saw
// nothing), the pre-freeze hook never ran, the process was never traced
// or stopped (its /proc status, watched all along) and runs on as it was.
func TestLiveRefusedBeforePrecopy(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	counter := testutil.Build(t, "counter")
	// start runs the workload of a case and returns it and the fd to refuse.
	type starter func(t *testing.T) (*testutil.Proc, int)
	oddFD := func(kind string) starter {
		return func(t *testing.T) (*testutil.Proc, int) {
			p := testutil.Start(t, counter, "-s", kind)
			line, _ := p.WaitLine(t, long, 0, "unsupported fd")
			var fd int
			if _, err := fmt.Sscanf(line, "unsupported fd %d", &fd); err != nil {
				t.Fatal(err)
			}
			p.WaitLine(t, long, 0, "ready")
			return p, fd
		}
	}
	locks := func(kind string) starter {
		return func(t *testing.T) (*testutil.Proc, int) {
			p, _, fd := startLocks(t, kind)
			return p, fd
		}
	}
	for _, tc := range []struct {
		name, prefix string
		start        starter
	}{
		{"netlink usersock", "socket:[", oddFD("netlink")},
		{"packet socket", "socket:[", oddFD("packet")},
		{"perf event", "anon_inode:[perf_event]", oddFD("perf")},
		{"userfaultfd", "anon_inode:[userfaultfd]", oddFD("uffd")},
		{"pty master", "/dev/", oddFD("pty")},
		{"pidfd of a process outside", "anon_inode:[pidfd]", oddFD("pidfd")},
		{"pipe to a process outside", "pipe:[", pipeOutside},
		{"unix socket to a process outside", "socket:[", unixOutside},
		{"POSIX lock", "/", locks("posix")},
		{"lease", "/", locks("lease")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, fd := tc.start(t)
			requireRefusedLive(t, addr, p.PID, fd, tc.prefix)
		})
	}
}

// pipeOutside starts a counter whose stdout is a pipe the test reads.
func pipeOutside(t *testing.T) (*testutil.Proc, int) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := testutil.StartWith(t, testutil.Options{Stdout: w}, testutil.Build(t, "counter"))
	w.Close()
	var ticking atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "tick 3") {
				ticking.Store(true)
			}
		}
	}()
	t.Cleanup(func() {
		p.Kill(t)
		<-done
		r.Close()
	})
	testutil.WaitFor(t, short, "the counter to count", ticking.Load)
	return p, 1
}

// unixOutside starts sock_outside connected to a unix listener of the
// test.
func unixOutside(t *testing.T) (*testutil.Proc, int) {
	path := filepath.Join(t.TempDir(), "outside.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	keepAccepting(t, l)
	p := testutil.Start(t, testutil.Build(t, "sock_outside"), "unix", path)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	var fd int
	fmt.Sscan(field(t, ready, "fd"), &fd)
	return p, fd
}

// requireRefusedLive migrates process pid to addr and wants it refused for
// fd (whose /proc link starts with prefix) before anything started, with
// the process never stopped and running on as it was.
func requireRefusedLive(t *testing.T, addr string, pid, fd int, prefix string) {
	t.Helper()
	before := testutil.Take(t, pid)
	marker := filepath.Join(t.TempDir(), "froze")
	hooks, err := hook.Parse([]string{"pre-freeze=touch " + marker}, hook.Source)
	if err != nil {
		t.Fatal(err)
	}
	// Watch the process's status while the migration runs: it must never
	// be traced or stopped.
	stop := make(chan struct{})
	var seen atomic.Value
	var watched sync.WaitGroup
	watched.Add(1)
	go func() {
		defer watched.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if (strings.HasPrefix(l, "TracerPid:") && strings.TrimSpace(strings.TrimPrefix(l, "TracerPid:")) != "0") ||
					(strings.HasPrefix(l, "State:") && (strings.Contains(l, "(stopped)") || strings.Contains(l, "(tracing stop)"))) {
					seen.CompareAndSwap(nil, l)
				}
			}
		}
	}()
	var milestones []source.Milestone
	rounds := 0
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := source.Migrate(ctx, source.MigrateOptions{PID: pid, To: addr, Transport: transport.Config{Insecure: true},
		Logger: testLogger(t), Hooks: hooks,
		Notify:   func(m source.Milestone) { milestones = append(milestones, m) },
		Progress: func(source.RoundReport) { rounds++ }})
	close(stop)
	watched.Wait()
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) {
		t.Fatalf("migration: %v (%T), want an *source.UnsupportedFDError", err, err)
	}
	t.Logf("refused: %v", err)
	if ue.PID != pid || ue.FD != fd || !strings.HasPrefix(ue.Kind, prefix) {
		t.Errorf("refusal of pid %d fd %d (%s), want pid %d fd %d (%s...)", ue.PID, ue.FD, ue.Kind, pid, fd, prefix)
	}
	if rep != nil {
		t.Errorf("a report for a refused migration: %+v", rep)
	}
	if len(milestones) != 0 || rounds != 0 {
		t.Errorf("the refusal came after %v and %d rounds: it must come before any page is sent", milestones, rounds)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the pre-freeze hook ran")
	}
	if l := seen.Load(); l != nil {
		t.Errorf("the process was stopped or traced during the refused migration: %s", l)
	}
	testutil.RequireRunning(t, pid)
	if diff := before.Diff(testutil.Take(t, pid), 1, 2); diff != "" {
		t.Errorf("the process changed across the refused migration:\n%s", diff)
	}
}

// keepAccepting accepts connections on l and keeps them open until the
// test ends, when l and they are closed.
func keepAccepting(t *testing.T, l net.Listener) {
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
}
