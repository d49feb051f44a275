package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLivePostCopy moves a 256 MiB process that rewrites its memory at
// 100 MB/s with --post-copy: after the first pre-copy round it is frozen,
// resumed on the target with the pages written since missing, and those
// come on demand or in the background. It then checks every page.
func TestLivePostCopy(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := startDirty(t, 256, 100)
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Mode: source.ModePostCopy})
	pc := rep.PostCopy
	if pc == nil {
		t.Fatalf("no post-copy in the report: %+v", rep)
	}
	t.Logf("post-copy: %+v; downtime %.1f ms (target %.1f ms), total %.1f ms, rounds %d",
		*pc, rep.DowntimeMS, rep.TargetDowntimeMS, rep.TotalMS, len(rep.Rounds))
	if !pc.FinishedOnTarget || pc.MissingPages == 0 || pc.OnDemandPages+pc.BackgroundPages == 0 || pc.Reason != "post-copy" {
		t.Errorf("post-copy report %+v", *pc)
	}
	t.Logf("target steps: %+v", rep.TargetSteps)
	if len(rep.Rounds) != 2 {
		t.Errorf("%d rounds, want round 0 and the final one", len(rep.Rounds))
	}
	if rep.DowntimeMS <= 0 {
		t.Errorf("downtime %.1f ms", rep.DowntimeMS)
	}
	waitServeLog(t, s, "post-copy done: every page is in place")
	verifyDirty(t, r)
}

// TestLivePostCopyAuto: --mode auto on a writer that does not converge
// within the rounds allowed switches to post-copy, and the process comes
// out whole.
func TestLivePostCopyAuto(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := startDirty(t, 128, 200)
	pol := source.Policy{MaxRounds: 2, TargetDowntime: time.Millisecond, MinShrink: 0.2, Patience: 2}
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Mode: source.ModeAuto, Policy: pol})
	pc := rep.PostCopy
	if pc == nil {
		t.Fatalf("--mode auto did not switch to post-copy: rounds %+v", rep.Rounds)
	}
	t.Logf("post-copy: %+v; downtime %.1f ms, total %.1f ms, rounds %d", *pc, rep.DowntimeMS, rep.TotalMS, len(rep.Rounds))
	if !strings.HasSuffix(pc.Reason, ", post-copy") || !pc.FinishedOnTarget {
		t.Errorf("post-copy report %+v", *pc)
	}
	verifyDirty(t, r)
}

// waitServeLog waits for the service's log to say what.
func waitServeLog(t *testing.T, s *serveProc, what string) {
	t.Helper()
	testutil.WaitFor(t, long, "the service to log "+what, func() bool {
		b, _ := os.ReadFile(s.Log)
		return strings.Contains(string(b), what)
	})
}

// TestLivePostCopySourceDies kills the source's migrate while the process
// runs on the target in post-copy: the target cannot fill the pages it
// lacks, so it kills the process (none is left hanging on a fault) and
// says so; the original stays frozen on the source.
func TestLivePostCopySourceDies(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := startDirty(t, 32, 100)
	// A slow link: the post-copy lasts long enough to be cut.
	m := startPostCopyCmd(t, s, p.PID, "10")
	inner := findInNamespace(t, p.PID)
	if err := m.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	waitLost(t, s, inner)
	// The original stays frozen, for the operator: never resumed.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil || !strings.Contains(string(b), ") T ") && !strings.Contains(string(b), ") t ") {
		t.Errorf("the original: %q, %v; want it stopped", b, err)
	}
}

// TestLivePostCopyFork: a process that forks while pages are still
// missing is lost rather than run with a child that would see zeros in
// their place: the target kills both and says so.
func TestLivePostCopyFork(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, testutil.Build(t, "forkmem"), "64")
	p.WaitLine(t, long, 0, "ready")
	m := startPostCopyCmd(t, s, p.PID, "5")
	inner := findInNamespace(t, p.PID)
	if err := unix.Kill(inner, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitServeLog(t, s, "post-copy: killed a child the process forked while pages were missing")
	waitLost(t, s, inner)
	if err := m.Wait(); err == nil {
		t.Error("migrate --to succeeded")
	}
	if !strings.Contains(m.out.String(), "the process is lost") {
		t.Errorf("migrate --to did not say the process is lost")
	}
}

// removeRecordsAfter removes, once the test is over, the records a
// migration of pid left in source.RecordDir (one that lost its process
// leaves its original frozen, and says so there).
func removeRecordsAfter(t *testing.T, pid int) {
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join(source.RecordDir, fmt.Sprintf("%d-*.json", pid)))
		for _, f := range files {
			os.Remove(f)
		}
	})
}

// postCopyCmd is a `migrate --to --post-copy` running.
type postCopyCmd struct {
	*exec.Cmd
	out strings.Builder
}

// startPostCopyCmd moves pid to s with `migrate --to --post-copy`, its
// pages at most mbps MB/s, and returns once the process runs on the
// target in post-copy. Its output is logged if the test fails; it is
// killed at the end.
func startPostCopyCmd(t *testing.T, s *serveProc, pid int, mbps string) *postCopyCmd {
	t.Helper()
	removeRecordsAfter(t, pid)
	m := &postCopyCmd{}
	m.Cmd = exec.Command(buildMigrate(t), "--to", s.Addr, "--insecure", "-v", "--post-copy", "--bandwidth", mbps, strconv.Itoa(pid))
	m.Stdout, m.Stderr = &m.out, &m.out
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Process.Kill()
		m.Wait()
		if t.Failed() {
			t.Logf("migrate's output:\n%s", m.out.String())
		}
	})
	waitServeLog(t, s, "post-copy: the process runs")
	return m
}

// waitLost waits for the service s to say it lost the process in
// post-copy, and for the process (inner, as this namespace sees it) to
// be gone.
func waitLost(t *testing.T, s *serveProc, inner int) {
	t.Helper()
	waitServeLog(t, s, "post-copy failed: the process cannot run without the pages it lacks and is KILLED")
	testutil.WaitFor(t, long, "the process on the target to be gone", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", inner))
		return err != nil || strings.Contains(string(b), ") Z ") || strings.Contains(string(b), ") X ")
	})
}

// TestLivePostCopyLinkCut cuts the link (every connection through a
// proxy) while the process runs on the target in post-copy: the target
// kills it, and migrate --to fails saying the process is lost, the
// original left frozen.
func TestLivePostCopyLinkCut(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	px := startProxy(t, s.Addr)
	p := startDirty(t, 32, 100)
	removeRecordsAfter(t, p.PID)
	m := startMigration(source.MigrateOptions{PID: p.PID, To: px.Addr(), Transport: transport.Config{Insecure: true},
		Logger: testLogger(t), Mode: source.ModePostCopy, Bandwidth: 10e6})
	waitServeLog(t, s, "post-copy: the process runs")
	inner := findInNamespace(t, p.PID)
	px.Cut()
	m.waitOrHang(t, s, time.Minute)
	var pe *handoff.PostCopyError
	if !errors.As(m.err, &pe) || pe.PID != p.PID {
		t.Fatalf("migrate: %v, want a PostCopyError", m.err)
	}
	if m.rep == nil || m.rep.PostCopy == nil || m.rep.PostCopy.FinishedOnTarget {
		t.Errorf("report: %+v", m.rep)
	}
	waitLost(t, s, inner)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil || !strings.Contains(string(b), ") T ") && !strings.Contains(string(b), ") t ") {
		t.Errorf("the original: %q, %v; want it stopped", b, err)
	}
}
