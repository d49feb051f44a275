package e2e

import (
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
)

// TestRecreatedFileOwner: a process of user nobody holds open (and maps) a
// deleted copy of a program that is set-user-ID nobody. Restored by root,
// the copy the restore makes belongs to nobody again with the same mode,
// and running it gives nobody's privilege, not root's.
func TestRecreatedFileOwner(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "privs")
	dir := publicDir(t)
	prog := testutil.CopyBinary(t, bin, dir)
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
	p := testutil.StartWith(t, testutil.Options{Dir: dir, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, bin, "hold", prog)
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

// TestCredsRestored: a process that dropped from root to a user and group
// with two groups, kept a few capabilities (permitted, effective,
// inheritable, ambient), cut its bounding set, set securebits and
// no_new_privs, and started a thread that dropped capabilities of its own
// (raw capset: that thread only), comes back with all of it, in each
// thread, as the threads see it themselves and as /proc shows it; one
// that made itself dumpable again after the drop stays dumpable, and one
// of root that made itself not dumpable stays so. Its
// thread is created again although the process runs as that user (the
// credentials come after the threads).
func TestCredsRestored(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "privs")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"one thread", []string{"drop", "4321", "4322", "single"}},
		{"two threads", []string{"drop", "4321", "4322"}},
		{"dumpable again", []string{"drop", "4321", "4322", "single", "dumpable"}},
		{"root, not dumpable", []string{"drop", "0", "0", "single", "undumpable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkCredsRestored(t, bin, tc.args, !slices.Contains(tc.args, "single"))
		})
	}
}

func checkCredsRestored(t *testing.T, bin string, args []string, threaded bool) {
	dir := publicDir(t)
	p := testutil.StartWith(t, testutil.Options{Dir: dir}, bin, args...)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	tid := field(t, ready, "tid")
	main0, _ := p.WaitLine(t, short, 0, "self who=main")
	var thread0 string
	if threaded {
		thread0, _ = p.WaitLine(t, short, 0, "self who=thread")
		if field(t, main0, "CapPrm") == field(t, thread0, "CapPrm") {
			t.Fatalf("the workload's thread did not drop its own capabilities:\n%s\n%s", main0, thread0)
		}
	}
	fields := []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"}
	view := func(pid int, tid string) map[string]string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, tid))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ":")
			m[k] = strings.TrimSpace(v)
		}
		out := map[string]string{}
		for _, f := range fields {
			out[f] = m[f]
		}
		return out
	}
	pid := fmt.Sprint(p.PID)
	tids := map[string]string{"main": pid}
	if threaded {
		tids["thread"] = tid
	}
	before := map[string]map[string]string{}
	for who, tid := range tids {
		before[who] = view(p.PID, tid)
	}
	p.WaitTick(t, short, 2)

	imgDir, _ := dumpKill(t, p, "")
	r := restoreOK(t, imgDir, p.Log)
	for who, tid := range tids {
		after := view(r.PID, tid)
		for _, f := range fields {
			if after[f] != before[who][f] {
				t.Errorf("%s thread: %s %q before the dump, %q after restore", who, f, before[who][f], after[f])
			}
		}
	}
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	main1, _ := r.WaitLine(t, short, n, "self who=main")
	if main1 != main0 {
		t.Errorf("main thread sees\n%s\nafter restore, saw\n%s\nbefore", main1, main0)
	}
	if threaded {
		thread1, _ := r.WaitLine(t, short, n, "self who=thread")
		if thread1 != thread0 {
			t.Errorf("second thread sees\n%s\nafter restore, saw\n%s\nbefore", thread1, thread0)
		}
	}
}

// publicDir is a temporary directory every user can enter (t.TempDir's
// parent is 0700).
func publicDir(t *testing.T) string {
	t.Helper()
	// Not the cluster's prefix (cluster.Prefix): its cleanup of stale
	// runs removed such a directory under a running test.
	dir, err := os.MkdirTemp("", "migrate-public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestMigrateNotPermitted: migrate run by user nobody on a process of root
// refuses it (exit status 3) without touching it, for a dump and for a
// migration; a set-user-ID root copy of migrate run by nobody refuses to
// run at all, where it used to dump (and kill) root's process.
func TestMigrateNotPermitted(t *testing.T) {
	testutil.RequireRoot(t)
	const exitDenied = 3 // cmd/migrate
	dir := publicDir(t)
	plain := testutil.CopyBinary(t, buildMigrate(t), dir)
	setuid := filepath.Join(dir, "migrate-setuid")
	data, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(setuid, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(setuid, 0o4755); err != nil {
		t.Fatal(err)
	}
	// Where nobody could write an image.
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(out, 0o777); err != nil {
		t.Fatal(err)
	}
	victim := testutil.Start(t, "/bin/sleep", "1000")
	pid := fmt.Sprint(victim.PID)
	for _, tc := range []struct {
		name string
		bin  string
		args []string
	}{
		{"dump", plain, []string{"dump", "--dir", filepath.Join(out, "a"), pid}},
		{"migrate", plain, []string{"--to", "127.0.0.1:1", "--insecure", pid}},
		{"set-user-ID dump", setuid, []string{"dump", "--dir", filepath.Join(out, "b"), pid}},
		{"set-user-ID version", setuid, []string{"version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(tc.bin, tc.args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			got, err := cmd.CombinedOutput()
			t.Logf("migrate %s as nobody: %v\n%s", strings.Join(tc.args, " "), err, got)
			if code := cmd.ProcessState.ExitCode(); code != exitDenied {
				t.Errorf("exit status %d, want %d (not permitted)", code, exitDenied)
			}
			st, err := testutil.State(victim.PID)
			if err != nil || st != 'S' {
				t.Fatalf("root's process after the refusal: state %c, %v; want it sleeping, untouched", st, err)
			}
			if tr := testutil.StatusField(t, victim.PID, "TracerPid"); tr != "0" {
				t.Errorf("root's process is traced by %s", tr)
			}
		})
	}
}

// TestCredsBeyondRestorer: an image whose process had a capability the
// restorer lacks (edited in: root here has no CAP_SYS_RESOURCE) is
// restored with the rest of its credentials, and the report warns.
func TestCredsBeyondRestorer(t *testing.T) {
	testutil.RequireRoot(t)
	bnd, err := strconv.ParseUint(testutil.StatusField(t, os.Getpid(), "CapBnd"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		t.Fatal(err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	missing := -1
	for c := 0; c <= last; c++ {
		if bnd&(1<<c) == 0 {
			missing = c
			break
		}
	}
	if missing < 0 {
		t.Skip("the test process has every capability in its bounding set: none a restore could not give")
	}
	p := testutil.StartWith(t, testutil.Options{Dir: publicDir(t)}, testutil.Build(t, "privs"), "drop", "4321", "4322", "single")
	p.WaitLine(t, short, 0, "ready")
	main0, _ := p.WaitLine(t, short, 0, "self who=main")
	dir, img := dumpKill(t, p, "")
	c := &img.Process.Creds
	c.CapPrm |= 1 << missing
	c.CapEff |= 1 << missing
	c.CapBnd |= 1 << missing
	if err := core.WriteImage(dir, img); err != nil {
		t.Fatal(err)
	}
	r, rep := restoreWithReport(t, dir, p.Log)
	if len(rep.Warnings) == 0 {
		t.Errorf("capability %d could not be given, and the restore did not warn", missing)
	}
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	if main1, _ := r.WaitLine(t, short, n, "self who=main"); main1 != main0 {
		t.Errorf("the process sees\n%s\nafter restore, saw\n%s\nbefore", main1, main0)
	}
}
