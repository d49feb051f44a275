package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// hostMounts returns the mounts of the test's (migrate's) namespace a
// restore that leaked would change: those under base (the test's
// directory, where the workload mounts and unmounts) and those the
// workload replaces or unmounts in its namespace (/, /proc, /sys,
// /run/netns), not the others, which other tests on the machine change as
// they run.
func hostMounts(t *testing.T, base string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		switch p := f[4]; {
		case p == "/" || p == "/proc" || p == "/sys" || p == "/run/netns" || strings.HasPrefix(p, base+"/"):
			out = append(out, l)
		}
	}
	return out
}

// mntnsBox makes the directories the mntns workload mounts on, a tmpfs
// of the test's namespace for it to unmount (gone), a host directory for
// it to bind (src), and a shared tmpfs (shared, next to them) of which it
// has a slave.
func mntnsBox(t *testing.T) (dir, gone, src string) {
	t.Helper()
	base := t.TempDir()
	dir, gone, src = filepath.Join(base, "box"), filepath.Join(base, "gone"), filepath.Join(base, "src")
	shared := filepath.Join(base, "shared")
	for _, d := range []string{shared, dir, filepath.Join(dir, "t"), filepath.Join(dir, "b"), filepath.Join(dir, "p"), filepath.Join(dir, "pts"), filepath.Join(dir, "mq"), gone, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "file"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("gone", gone, "tmpfs", 0, "size=64k"); err != nil {
		testutil.Unavailable(t, "mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(gone, unix.MNT_DETACH) })
	if err := unix.Mount("shared", shared, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(shared, unix.MNT_DETACH) })
	if err := unix.Mount("", shared, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	return dir, gone, src
}

const mntnsCheck = "check tmpfs=ok owner=ok symlink=ok hardlink=ok setuid=ok modes=ok bind=ok proc=ok virtual=ok unmounted=ok"

func mntnsChecked(t *testing.T, p *testutil.Proc, when string) {
	t.Helper()
	n := len(p.Lines(t))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of %d: %q", p.PID, p.Lines(t))
		}
	})
	p.Signal(t, unix.SIGUSR1)
	if got, _ := p.WaitLine(t, short, n, "check"); got != mntnsCheck {
		t.Fatalf("%s the process sees\n%s\nwant\n%s", when, got, mntnsCheck)
	}
}

// startMntns starts the mntns workload and returns it with its child (0
// if none), which is reaped once it is an orphan.
func startMntns(t *testing.T, args ...string) (*testutil.Proc, int) {
	t.Helper()
	var child int
	// Registered before the parent's own cleanup, so run after it: the
	// child (the original's, or the restored one) is then an orphan.
	t.Cleanup(func() {
		if child > 0 {
			testutil.ReapOrphan(t, child)
		}
	})
	p := testutil.Start(t, testutil.Build(t, "mntns"), args...)
	line, _ := p.WaitLine(t, short, 0, "ready")
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d", new(int), &child); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	return p, child
}

// A process in a mount namespace of its own (a tmpfs with files, a bind
// mount of a host directory made read-only, a proc, a tmpfs of migrate's
// namespace unmounted) is dumped and restored into a new namespace with
// the same mounts: it sees the same files and mounts, Check found its
// normalised mount table and tmpfs files the image's, and migrate's own
// mount table is as it was.
func TestMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	dir, gone, src := mntnsBox(t)
	before := hostMounts(t, filepath.Dir(dir))
	p, child := startMntns(t, "full", dir, gone, src)
	mntnsChecked(t, p, "before the dump")
	wantTable, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", p.PID))
	if err != nil {
		t.Fatal(err)
	}

	imgDir, img := dumpTreeKill(t, p, child)
	if img.Mounts == nil {
		t.Fatal("the image has no mount namespace")
	}
	kinds := map[string]string{}
	for _, m := range img.Mounts.Mounts {
		kinds[m.Point] = m.Kind
	}
	for _, m := range img.Mounts.Mounts {
		if m.Shared != (m.Point == dir+"/t") || m.Slave != (m.Point == filepath.Dir(dir)+"/shared") {
			t.Errorf("mount %s: shared %v, slave %v in the image", m.Point, m.Shared, m.Slave)
		}
	}
	for point, kind := range map[string]string{dir + "/t": core.MountTmpfs, dir + "/t/inner": core.MountTmpfs, dir + "/b": core.MountBind, dir + "/p": core.MountFresh, dir + "/pts": core.MountFresh, dir + "/mq": core.MountFresh, "/": core.MountHost} {
		if kinds[point] != kind {
			t.Errorf("mount %s is of kind %q in the image, want %q", point, kinds[point], kind)
		}
	}
	if _, ok := kinds[gone]; ok {
		t.Errorf("the image has %s, which the process unmounted", gone)
	}

	r := restoreOK(t, imgDir, p.Log)
	mntnsChecked(t, r, "after the restore")
	gotTable, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", r.PID))
	if err != nil {
		t.Fatal(err)
	}
	if w, g := len(strings.Split(string(wantTable), "\n")), len(strings.Split(string(gotTable), "\n")); w != g {
		t.Errorf("the restored process has %d mounts, the original %d:\n%s\nwant\n%s", g, w, gotTable, wantTable)
	}
	mine, _ := os.Readlink("/proc/self/ns/mnt")
	if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", r.PID)); its == mine {
		t.Error("the restored process is in migrate's mount namespace")
	}
	if after := hostMounts(t, filepath.Dir(dir)); !slices.Equal(before, after) {
		t.Errorf("migrate's mount table changed:\n%s\nwas\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	// The slave still receives the mounts made on the shared mount here.
	sub := filepath.Join(filepath.Dir(dir), "shared", "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("sub", sub, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(sub, unix.MNT_DETACH)
	table, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", r.PID))
	if !strings.Contains(string(table), " "+sub+" ") {
		t.Errorf("a mount on the shared mount did not reach the restored slave:\n%s", table)
	}
}

// An overlay in the process's mount namespace is refused before anything
// is frozen, naming its mount point and type; the process runs on.
func TestMountNamespaceOverlayRefused(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	p := testutil.Start(t, testutil.Build(t, "mntns"), "overlay", dir)
	if line, _ := p.WaitLine(t, short, 0, ""); strings.HasPrefix(line, "FAIL") {
		testutil.Unavailable(t, "overlay: %s", line)
	}
	p.WaitLine(t, short, 0, "ready")
	_, err := migrate.Dump(context.Background(), p.PID, t.TempDir(), migrate.DumpOptions{Logger: testLogger(t)})
	var um *source.UnsupportedMountError
	if !errors.As(err, &um) || um.Point != filepath.Join(dir, "o") || um.FSType != "overlay" {
		t.Fatalf("dump of a process with an overlay: %v (%T), want an UnsupportedMountError naming %s/o overlay", err, err, dir)
	}
	var re *migrate.RefusedError
	if !errors.As(err, &re) || re.Kind != migrate.RefusedMount {
		t.Errorf("the refusal is not of kind mount: %v", err)
	}
	testutil.RequireRunning(t, p.PID)
	if st, _ := testutil.State(p.PID); st == 't' {
		t.Error("the process was left stopped")
	}
}

// A tree whose processes live in different mount namespaces is refused
// (a tree moves with one), and so are a process whose root directory is
// not its namespace's (chroot), a tmpfs holding a FIFO or a file with an
// extended attribute (named), and a
// read-only tmpfs holding a file with contents in a live migration (its
// files are made as it is mounted, before the contents come); all run on.
func TestMountNamespaceRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []string{"split", "chroot", "fifo", "rotmpfs", "xattr"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			p, child := startMntns(t, mode, dir)
			var err error
			if mode == "rotmpfs" {
				_, err = source.Migrate(context.Background(), source.MigrateOptions{PID: p.PID, To: "127.0.0.1:1"})
			} else {
				_, err = source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
			}
			var bt *source.BadTargetError
			var um *source.UnsupportedMountError
			switch {
			case mode == "split" && (!errors.As(err, &bt) || bt.PID != child):
				t.Fatalf("dump of a tree in two mount namespaces: %v (%T), want a BadTargetError naming %d", err, err, child)
			case mode == "chroot" && (!errors.As(err, &um) || um.Point != "/"):
				t.Fatalf("dump of a chrooted process: %v (%T), want an UnsupportedMountError", err, err)
			case (mode == "fifo" || mode == "rotmpfs" || mode == "xattr") && (!errors.As(err, &um) || um.Point != dir || um.FSType != "tmpfs"):
				t.Fatalf("%s: %v (%T), want an UnsupportedMountError naming %s", mode, err, err, dir)
			case mode == "xattr" && um.File != "x":
				t.Errorf("the refusal does not name the file with an extended attribute: %v", err)
			case mode == "fifo" && um.File != "fifo":
				t.Errorf("the refusal does not name the FIFO: %v", err)
			}
			testutil.RequireRunning(t, p.PID)
			if child > 0 {
				testutil.RequireRunning(t, child)
			}
		})
	}
}

// A process in a mount namespace of its own moves live between the nodes
// of a cluster (which share the filesystem: the bound host directory is on
// both): the target builds the namespace at the first layout, fills its
// tmpfs mounts with the files of the final state, and the process sees the
// same files and mounts; the test's mount table is untouched.
func TestNodeMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	dir, gone, src := mntnsBox(t) // before the nodes: theirs have gone too
	bin := testutil.Build(t, "mntns")
	c := newCluster(t, cluster.Options{Hooks: cluster.HooksOff})
	before := hostMounts(t, filepath.Dir(dir))
	p, err := c.A.Start(cluster.StartOptions{}, bin, "live", dir, gone, src)
	if err != nil {
		t.Fatal(err)
	}
	checked := func(n *cluster.Node, when string) {
		t.Helper()
		testutil.WaitFor(t, short, "the workload to be ready", func() bool { return strings.Contains(readFile(p.Log), "ready") })
		was := strings.Count(readFile(p.Log), "check")
		if out, err := n.Command("kill", "-USR1", fmt.Sprint(p.NSPID)).CombinedOutput(); err != nil {
			t.Fatalf("kill on %s: %v: %s", n, err, out)
		}
		testutil.WaitFor(t, short, "a check line "+when, func() bool { return strings.Count(readFile(p.Log), "check") > was })
		lines := strings.Split(strings.TrimSpace(readFile(p.Log)), "\n")
		if got := lines[len(lines)-1]; got != mntnsCheck {
			t.Fatalf("%s the process sees\n%s\nwant\n%s", when, got, mntnsCheck)
		}
	}
	checked(c.A, "before the migration")
	migrateStep(t, c, c.A, c.B, "mntns", p.NSPID, p.Log)
	checked(c.B, "after the migration")
	if after := hostMounts(t, filepath.Dir(dir)); !slices.Equal(before, after) {
		t.Errorf("the test's mount table changed:\n%s\nwas\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// A restore whose bind mount's host path is not there is refused, naming
// the mount, before any process is created; nothing is left, and the
// test's mount table is as it was.
func TestMountNamespaceRestoreRefused(t *testing.T) {
	testutil.RequireRoot(t)
	dir, gone, src := mntnsBox(t)
	p, child := startMntns(t, "full", dir, gone, src)
	imgDir, img := dumpTreeKill(t, p, child)
	if err := os.Rename(src, src+".away"); err != nil {
		t.Fatal(err)
	}
	before := hostMounts(t, filepath.Dir(dir))
	kids := testutil.Children()
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: imgDir, Logger: testLogger(t), Check: true})
	var me *target.MountError
	if !errors.As(err, &me) || me.Point != dir+"/b" {
		t.Fatalf("restore without the bound host directory: %v (%T), want a MountError naming %s/b", err, err, dir)
	}
	requireNothingLeft(t, img.Process.PID, kids)
	if after := hostMounts(t, filepath.Dir(dir)); !slices.Equal(before, after) {
		t.Errorf("migrate's mount table changed:\n%s\nwas\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
}
