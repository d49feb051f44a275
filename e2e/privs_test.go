package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"migrate/e2e/fixture"
)

// TestRecreatedFileOwner: a process of user nobody holds open (and maps) a
// deleted copy of a program that is set-user-ID nobody. Restored by root,
// the copy the restore makes belongs to nobody again with the same mode,
// and running it gives nobody's privilege, not root's.
func TestRecreatedFileOwner(t *testing.T) {
	fixture.RequireRoot(t)
	bin := fixture.Build(t, "privs")
	dir := publicDir(t)
	prog := fixture.CopyBinary(t, bin, dir)
	if err := os.Chown(prog, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(prog, 0o4755); err != nil {
		t.Fatal(err)
	}
	runID := func(path string) string {
		out, err := exec.Command(path, "id").Output()
		if err != nil {
			t.Fatalf("run %s: %v", path, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := runID(prog); got != "id euid=65534 egid=0" {
		t.Skipf("set-user-ID programs do not run as their owner here (%q): nothing to test", got)
	}
	var st0 unix.Stat_t
	if err := unix.Stat(prog, &st0); err != nil {
		t.Fatal(err)
	}
	p := fixture.StartWith(t, fixture.Options{Dir: dir, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, bin, "hold", prog)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	fd := field(t, ready, "fd")
	if err := os.Remove(prog); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 2)
	imgDir, _ := dumpKill(t, p, "")
	r := restoreOK(t, imgDir, p.Log)

	path := fmt.Sprintf("/proc/%d/fd/%s", r.PID, fd)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != st0.Uid || st.Gid != st0.Gid || st.Mode != st0.Mode {
		t.Errorf("recreated file: owner %d:%d mode %o, the original had %d:%d mode %o", st.Uid, st.Gid, st.Mode, st0.Uid, st0.Gid, st0.Mode)
	}
	if st.Nlink != 0 {
		t.Errorf("recreated file has %d links, want 0 (deleted)", st.Nlink)
	}
	if got := runID(path); got != "id euid=65534 egid=0" {
		t.Errorf("the recreated program runs with %q, the original ran with euid 65534", got)
	}
	r.WaitTick(t, short, r.LastTick(t)+2)
}

// publicDir is a temporary directory every user can enter (t.TempDir's
// parent is 0700).
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "migrate-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
