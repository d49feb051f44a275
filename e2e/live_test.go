package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

var (
	migrateOnce sync.Once
	migrateBin  string
	migrateErr  error
)

// buildMigrate builds bin/migrate once per test binary.
func buildMigrate(t testing.TB) string {
	t.Helper()
	migrateOnce.Do(func() {
		dir, err := os.MkdirTemp("", "migrate-bin-")
		if err != nil {
			migrateErr = err
			return
		}
		migrateBin = filepath.Join(dir, "migrate")
		out, err := exec.Command("go", "build", "-o", migrateBin, "github.com/procmig/migrate/cmd/migrate").CombinedOutput()
		if err != nil {
			migrateErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if migrateErr != nil {
		t.Fatal(migrateErr)
	}
	return migrateBin
}

// startServe runs `migrate serve` as PID 1 of a new PID namespace (with its
// own /proc), on a free loopback port: there the PIDs of the test's
// processes are free, as on another host. Killing it ends the namespace
// and every process in it.
func startServe(t *testing.T) string {
	t.Helper()
	return startServeWith(t, serveOptions{}).Addr
}

// serveOptions configure startServeWith.
type serveOptions struct {
	// Listen is the address to listen on; default: a free loopback port.
	Listen string
	// SecretFile authenticates with a shared secret instead of --insecure.
	SecretFile string
	// Metrics, if set, is the --metrics address.
	Metrics string
	// NoFile, if not zero, is the service's RLIMIT_NOFILE (soft, hard),
	// and so the one the processes it builds start with.
	NoFile [2]int
	// IPC runs the service in an IPC namespace of its own (System V
	// segments of its own), as on another host.
	IPC bool
	// Time, if set, runs the service in a time namespace with these
	// offsets of CLOCK_MONOTONIC and CLOCK_BOOTTIME (seconds), as on a
	// host whose clocks differ.
	Time *[2]int
	// XSAVE, if not zero, is the service's --xsave-features.
	XSAVE uint64
	// CgroupRoot, if set, is the service's --cgroup-root.
	CgroupRoot string
	// VDSOProxy: the service's --vdso-proxy (the proxy on one kernel).
	VDSOProxy bool
	// Hooks are the service's --hook STAGE=COMMAND flags.
	Hooks []string
}

// serveProc is a `migrate serve` started by startServeWith.
type serveProc struct {
	Addr string
	// PID is the service's PID as the test sees it (it is PID 1 of its
	// namespace).
	PID int
	Log string // its stderr

	cmd    *exec.Cmd // unshare
	killed bool
}

// startServeWith is startServe with options.
func startServeWith(t *testing.T, o serveOptions) *serveProc {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is needed for a PID namespace: %v", err)
	}
	addr := o.Listen
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	auth := []string{"--insecure"}
	if o.SecretFile != "" {
		auth = []string{"--secret-file", o.SecretFile}
	}
	args := []string{"--pid", "--fork", "--kill-child", "--mount-proc"}
	if o.IPC {
		args = append(args, "--ipc")
	}
	if o.Time != nil {
		args = append(args, "--time", fmt.Sprintf("--monotonic=%d", o.Time[0]), fmt.Sprintf("--boottime=%d", o.Time[1]))
	}
	args = append(append(args, buildMigrate(t), "serve", "--listen", addr, "-v"), auth...)
	if o.XSAVE != 0 {
		args = append(args, fmt.Sprintf("--xsave-features=%#x", o.XSAVE))
	}
	if o.Metrics != "" {
		args = append(args, "--metrics", o.Metrics)
	}
	if o.CgroupRoot != "" {
		args = append(args, "--cgroup-root", o.CgroupRoot)
	}
	if o.VDSOProxy {
		args = append(args, "--vdso-proxy")
	}
	for _, h := range o.Hooks {
		args = append(args, "--hook", h)
	}
	cmd := exec.Command("unshare", args...)
	if o.NoFile[0] > 0 {
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			testutil.Unavailable(t, "prlimit (util-linux) is needed to start the service with RLIMIT_NOFILE %v: %v", o.NoFile, err)
		}
		// prlimit execs unshare: the PID stays unshare's.
		cmd = exec.Command(prlimit, append([]string{fmt.Sprintf("--nofile=%d:%d", o.NoFile[0], o.NoFile[1]), "--", "unshare"}, args...)...)
	}
	log, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &serveProc{Addr: addr, Log: log.Name(), cmd: cmd}
	t.Cleanup(func() {
		s.Kill(t)
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("serve log:\n%s", b)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "listening on ") {
		t.Fatalf("serve said %q, %v", line, err)
	}
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
	fmt.Sscan(string(kids), &s.PID)
	return s
}

// Kill kills the service, and with it every process of its namespace,
// and reaps it. It may be called more than once.
func (s *serveProc) Kill(t testing.TB) {
	if s.killed {
		return
	}
	s.killed = true
	// unshare's child, the service, is PID 1 of the namespace: when it
	// dies, so does every process in there. It becomes ours to reap.
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.cmd.Process.Pid, s.cmd.Process.Pid))
	s.cmd.Process.Kill()
	s.cmd.Wait()
	for _, f := range strings.Fields(string(kids)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			testutil.ReapOrphan(t, pid)
		}
	}
}

// TestLiveMigration moves a running counter with a large heap into another
// PID namespace over the network: it goes on counting there with the same
// PID (as that namespace sees it), its heap intact, and the original is
// gone.
func TestLiveMigration(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "64", "-b", "8")
	ready, _ := p.WaitLine(t, long, 0, "ready")
	sum0 := field(t, ready, "sum")
	p.WaitTick(t, short, 3)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" || len(rep.Rounds) < 2 || rep.Session == "" {
		t.Fatalf("report: %+v", rep)
	}
	t.Logf("migrated %d: %d rounds, %d pages, downtime %.1f ms, total %.1f ms, stages %+v", rep.PID, len(rep.Rounds), rep.Pages, rep.DowntimeMS, rep.TotalMS, rep.Stages)
	// Each stage of the page pipeline worked, the target's too, for no
	// longer than the migration took (compress sums its workers).
	var names []string
	for _, s := range rep.Stages {
		names = append(names, s.Stage)
		if s.BusyMS <= 0 || s.MBPerS <= 0 || (s.Stage != "compress" && s.BusyMS > rep.TotalMS) {
			t.Errorf("stage %+v of a migration of %d pages in %.1f ms", s, rep.Pages, rep.TotalMS)
		}
	}
	if !slices.Equal(names, []string{"read", "compress", "wire", "apply"}) {
		t.Errorf("stages %v, want read, compress, wire, apply", names)
	}
	// The original is dead: its parent (the test) reaps it.
	if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the original ended with %v, want killed", ws)
	}
	// The migrated one counts on in the same log, and its heap is intact
	// (SIGUSR1 would need its PID in the other namespace: the ticks and
	// the memory it keeps using show it runs; the checksum is asked for
	// through the namespace's PID below).
	lastTick := func() int {
		ticks := testutil.Ticks(testutil.LogLines(t, p.Log))
		if len(ticks) == 0 {
			return 0
		}
		return ticks[len(ticks)-1]
	}
	last := lastTick()
	testutil.WaitFor(t, short, "the migrated process to tick on", func() bool { return lastTick() >= last+5 })
	inner := findInNamespace(t, p.PID)
	if err := unix.Kill(inner, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	n := len(testutil.LogLines(t, p.Log))
	testutil.WaitFor(t, long, "the heap checksum", func() bool {
		for _, l := range testutil.LogLines(t, p.Log)[n:] {
			if strings.HasPrefix(l, "sum ") {
				if got := strings.TrimPrefix(l, "sum "); got != sum0 {
					t.Fatalf("heap checksum after migration %s, before %s", got, sum0)
				}
				return true
			}
		}
		return false
	})
}

// findInNamespace returns the PID, as this namespace sees it, of the
// process that is pid in a child PID namespace.
func findInNamespace(t *testing.T, pid int) int {
	t.Helper()
	var found int
	testutil.WaitFor(t, short, fmt.Sprintf("a process that is %d in a child namespace", pid), func() bool {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			var outer int
			if _, err := fmt.Sscan(e.Name(), &outer); err != nil || outer == pid {
				continue
			}
			b, err := os.ReadFile("/proc/" + e.Name() + "/status")
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
					ids := strings.Fields(f)
					if len(ids) == 2 && ids[1] == fmt.Sprint(pid) {
						found = outer
						return true
					}
				}
			}
		}
		return false
	})
	return found
}

// TestLiveMigrationRollback: failures before the commit leave the original
// running as it was: no target listening, and a process the target cannot
// take (an fd kind migrate refuses) is refused before it is frozen or any
// page sent: the target never hears of it.
func TestLiveMigrationRollback(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-s", "netlink")
	p.WaitLine(t, long, 0, "ready")
	before := testutil.Take(t, p.PID)

	// Nobody listens.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: dead, Transport: transport.Config{Insecure: true}}); err == nil {
		t.Fatal("migration to a closed port succeeded")
	}
	testutil.RequireRunning(t, p.PID)

	// The target is there, but the fd is refused before anything starts.
	addr := startServe(t)
	rep, err := source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t)})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) {
		t.Fatalf("migration of a process with a netlink socket: %v (%T), want a *source.UnsupportedFDError", err, err)
	}
	if rep != nil {
		t.Errorf("a report for a refused migration: %+v", rep)
	}
	testutil.RequireRunning(t, p.PID)
	if diff := before.Diff(testutil.Take(t, p.PID), 1, 2); diff != "" {
		t.Errorf("the process changed across the failed migration:\n%s", diff)
	}
	last := p.LastTick(t)
	p.WaitTick(t, short, last+3)
}

// TestLiveDeletedFile moves a process holding an open deleted file: the
// file comes back unlinked on the target with its contents and offset (its
// copy arrives only with the final state, after the first layout).
func TestLiveDeletedFile(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	work := t.TempDir()
	data := filepath.Join(work, "data.txt")
	var b strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&b, "line %04d\n", i)
	}
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testutil.Start(t, testutil.Build(t, "files"), data, filepath.Join(work, "out.txt"), work)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	var in, out, del int
	if _, err := fmt.Sscanf(field(t, ready, "fds"), "%d,%d,%d", &in, &out, &del); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 3)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the original ended with %v, want killed", ws)
	}
	r := migrated(findInNamespace(t, p.PID), p.Log)
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", r.PID, del)); err != nil || !strings.HasSuffix(l, " (deleted)") {
		t.Errorf("fd %d of the migrated process -> %q (%v), want a deleted file", del, l, err)
	}
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	got, _ := r.WaitLine(t, short, n, "deleted")
	if want := "deleted ok size=300000 pos=12345 nlink=0"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	stopMigrated(t, r)
}

// TestLiveDeletedExecutableRefused: a process whose executable was deleted
// after it started (a package upgrade replaces binaries under running
// services) is refused by a live migration before its memory is sent (a
// mapped deleted file has no copy until the freeze), and runs on.
func TestLiveDeletedExecutableRefused(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	bin, err := os.ReadFile(testutil.Build(t, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "counter")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	p := testutil.Start(t, exe, "-m", "4")
	p.WaitLine(t, long, 0, "ready")
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 3)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	var ue *source.UnsupportedMappingError
	if !errors.As(err, &ue) || ue.PID != p.PID || ue.Name != exe {
		t.Fatalf("migration of a process running a deleted executable: %v (%T), want an UnsupportedMappingError naming %s", err, err, exe)
	}
	if rep != nil {
		t.Errorf("a report for a refused migration: %+v", rep)
	}
	checkRunningUntraced(t, p.PID)
	p.WaitTick(t, short, p.LastTick(t)+3)
}

// TestLiveHookTimings: the report times each of the source's hooks, and a
// post-dump hook (run with the process frozen) that outlasts the downtime
// target is warned of.
func TestLiveHookTimings(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "4")
	p.WaitLine(t, long, 0, "ready")
	p.WaitTick(t, short, 3)
	hooks, err := hook.Parse([]string{"pre-freeze=true", "post-dump=sleep 0.1"}, hook.Source)
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, tWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: log, Hooks: hooks,
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	p.WaitExit(t, short)
	stopMigrated(t, migrated(findInNamespace(t, p.PID), p.Log))
	if len(rep.Hooks) != 2 || rep.Hooks[0].Stage != hook.PreFreeze || rep.Hooks[1].Stage != hook.PostDump ||
		!rep.Hooks[0].OK || !rep.Hooks[1].OK || rep.Hooks[1].MS < 100 {
		t.Fatalf("hooks in the report: %+v, want pre-freeze, then post-dump of at least 100 ms", rep.Hooks)
	}
	if rep.DowntimeMS < rep.Hooks[1].MS {
		t.Errorf("downtime %.1f ms, shorter than the post-dump hook (%.1f ms) it waited for", rep.DowntimeMS, rep.Hooks[1].MS)
	}
	if !strings.Contains(logs.String(), "a post-dump hook ran longer than the downtime target") {
		t.Error("no warning of the slow post-dump hook")
	}
}
