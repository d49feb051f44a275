package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/osthread"
)

// ProbeCgroupFreezer freezes a cgroup v2 made for a helper child (below
// this process's own), and checks what a freeze of a tree alone in its
// cgroup relies on: cgroup.events says "frozen 1", PTRACE_INTERRUPT moves
// the frozen child into a ptrace stop that wait4 reports while the cgroup
// is frozen, and the child stays stopped once the cgroup is thawed. The
// cgroup is thawed and removed, the child detached and ended.
//
// The ptrace part runs on a goroutine locked to its OS thread that never
// unlocks it (see ProbePtraceSeize).
func ProbeCgroupFreezer(ctx context.Context) (string, error) {
	type result struct {
		detail string
		err    error
	}
	ch := make(chan result, 1)
	osthread.Go(func() {
		d, err := probeCgroupFreezer(ctx)
		ch <- result{d, err}
	})
	r := <-ch
	return r.detail, r.err
}

func probeCgroupFreezer(ctx context.Context) (string, error) {
	own, err := proc.ReadCgroups(os.Getpid(), os.Getpid())
	if err != nil {
		return "", fmt.Errorf("own cgroups: %w", err)
	}
	path := ""
	for _, c := range own {
		if c.Controllers == "" {
			path = c.Path
		}
	}
	if path == "" {
		return "", unsupported(FeatureCgroupFreezer, "no cgroup v2 hierarchy (cgroup v1 only)", nil)
	}
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		return "", fmt.Errorf("cgroup mounts: %w", err)
	}
	m, rel, ok := proc.CgroupMountFor(mounts, "", path)
	if !ok {
		return "", unsupported(FeatureCgroupFreezer, "cgroup2 is not mounted here", nil)
	}
	dir := filepath.Join(m.Dir, rel, fmt.Sprintf("migrate-probe-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "create a cgroup below "+path, err)
	}
	h, _, err := startHelper(ctx, "idle")
	if err != nil {
		os.Remove(dir)
		return "", err
	}
	pid := h.pid()
	defer func() {
		os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
		h.kill()
		// The helper is reaped: the cgroup empties at once, or soon.
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if _, err := os.Stat(filepath.Join(dir, "cgroup.freeze")); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "no cgroup.freeze (a kernel before 5.2)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "move a child into a cgroup of its own", err)
	}
	start := time.Now()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "write 1 to cgroup.freeze", err)
	}
	for !cgroupFrozen(dir) {
		if time.Since(start) > time.Second {
			return "", unsupported(FeatureCgroupFreezer, "cgroup.events did not say frozen 1 within a second", nil)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Microsecond):
		}
	}
	froze := time.Since(start)
	if err := unix.PtraceSeize(pid); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "PTRACE_SEIZE of the frozen child", err)
	}
	defer unix.PtraceDetach(pid)
	if err := unix.PtraceInterrupt(pid); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "PTRACE_INTERRUPT of the frozen child", err)
	}
	ws, err := waitStop(ctx, pid)
	if err != nil {
		return "", err
	}
	if !ws.Stopped() || ws.TrapCause() != unix.PTRACE_EVENT_STOP {
		return "", unsupported(FeatureCgroupFreezer, fmt.Sprintf("PTRACE_INTERRUPT of the frozen child gave wait status %#x, not a PTRACE_EVENT_STOP", uint32(ws)), nil)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "write 0 to cgroup.freeze", err)
	}
	if cgroupFrozen(dir) {
		return "", unsupported(FeatureCgroupFreezer, "cgroup.events still says frozen 1 once thawed", nil)
	}
	if st, err := proc.ReadStat(pid); err != nil || st.State != 't' {
		return "", unsupported(FeatureCgroupFreezer, "the child left its ptrace stop when the cgroup was thawed", err)
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return "", unsupported(FeatureCgroupFreezer, "PTRACE_DETACH", err)
	}
	if err := h.close(); err != nil {
		return "", fmt.Errorf("helper after detach: %w", err)
	}
	return fmt.Sprintf("a child's cgroup frozen in %s; PTRACE_INTERRUPT stopped it frozen; it stayed stopped once thawed (--freeze auto uses it for a tree alone in its cgroup)", roundDuration(froze)), nil
}

// cgroupFrozen says whether the cgroup.events of the cgroup at dir says
// "frozen 1".
func cgroupFrozen(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "frozen "); ok {
			return v == "1"
		}
	}
	return false
}
