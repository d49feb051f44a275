package e2e

// A container whose root is a directory of the host it pivoted into
// (pivot_root, as runc does), with its own proc, tmpfs, sysfs, devpts,
// mqueue and read-only binds of host paths: dumped and restored, its
// processes have the same root, working directory, executable and mount
// table inside.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// pivotScript runs in new mount, UTS and IPC namespaces (unshare): it
// binds the root filesystem ROOT over itself, the host directories DIRS
// read-only in it and the workload's directory W at /w, pivots into
// ROOT, detaches the old root, mounts a tmpfs at /tmp (with a file), a
// read-only sysfs, a tmpfs at /dev with devpts and the IPC namespace's
// mqueue on it, and runs the workload from /w as PID 1 of a new PID
// namespace with its proc (unshare --pid --mount-proc, in a copy of the
// mount namespace, as runc's init mounts it), its output in /log. The
// workload is $0. With LEAK, the workload has the host file LEAK, opened
// before the pivot, at fd 3.
const pivotScript = `set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
R=$1; W=$2; DIRS=$3; LEAK=$4; shift 4
if [ -n "$LEAK" ]; then exec 3<"$LEAK"; fi
mount --make-rprivate /
mount --bind "$R" "$R"
for d in $DIRS; do mount --bind "/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"; done
mount --bind "$W" "$R/w"; mount -o remount,bind,ro "$R/w"
cd "$R"
pivot_root . old
mount -t proc proc /proc
umount -l /old
umount /proc
mount -t tmpfs -o size=1m,mode=1777 tmpfs /tmp
echo note > /tmp/note
mount -t sysfs -o ro sysfs /sys
mount -t tmpfs -o mode=755,size=64k tmpfs /dev
mkdir /dev/pts /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t mqueue mqueue /dev/mqueue
cd /w
W=/w/$(basename "$0")
exec unshare --pid --fork --mount-proc /bin/sh -c 'exec "$0" "$@" <"$0" >/log 2>&1' "$W" "$@"
`

// pivotCommand prepares a root filesystem for the container workload
// named host, made of the host's directories bound read-only (usr, and
// bin, lib, lib64, sbin where they are not symbolic links: else the same
// links), and returns the command that starts it there (pivotScript run
// by unshare) and the root's host directory.
func pivotCommand(t *testing.T, host, leak string) ([]string, string) {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	prog := testutil.Build(t, "container")
	root := filepath.Join(t.TempDir(), "rootfs")
	var dirs []string
	for _, d := range []string{"usr", "bin", "lib", "lib64", "sbin", "w", "proc", "tmp", "sys", "dev", "old"} {
		fi, err := os.Lstat("/" + d)
		switch {
		case err == nil && fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink("/" + d)
			if err := os.Symlink(l, filepath.Join(root, d)); err != nil {
				t.Fatal(err)
			}
			continue
		case err == nil && (d == "usr" || d == "bin" || d == "lib" || d == "lib64" || d == "sbin"):
			dirs = append(dirs, d)
		case err != nil && d != "w" && d != "old":
			continue
		}
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(t.TempDir(), "pivot.sh")
	if err := os.WriteFile(script, []byte(pivotScript), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{unshare, "--mount", "--uts", "--ipc", "/bin/sh", "-c", ". " + script,
		filepath.Base(prog), root, filepath.Dir(prog), strings.Join(dirs, " "), leak, host}, root
}

// startPivoted starts the container workload named host in a root
// filesystem of its own (pivotCommand), and returns it and its root's
// host directory; with leak, see pivotScript.
func startPivoted(t *testing.T, host, leak string) (*container, string) {
	t.Helper()
	cmd, root := pivotCommand(t, host, leak)
	p := testutil.Start(t, cmd[0], cmd[1:]...)
	launcher := p.Log
	t.Cleanup(func() {
		if b, _ := os.ReadFile(launcher); t.Failed() && len(b) > 0 {
			t.Logf("unshare and the script said:\n%s", b)
		}
	})
	p.Log = filepath.Join(root, "log")
	testutil.WaitFor(t, short, "the workload's log in its root filesystem", func() bool {
		_, err := os.Stat(p.Log)
		return err == nil
	})
	return adoptContainer(t, p), root
}

// TestContainerPivotRoot: a container in a root filesystem of its own,
// dumped and restored (Check compares its root, working directory,
// executable and mount table): it runs on as it did, its mount table,
// as it sees it, the same.
func TestContainerPivotRoot(t *testing.T) {
	testutil.RequireRoot(t)
	c, root := startPivoted(t, "box-pivot", "")
	before, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.init))
	if err != nil {
		t.Fatal(err)
	}
	dir, img := dumpInit(t, c.init, c.Proc)
	if img.Mounts == nil || !img.Mounts.Pivoted || img.Mounts.Mounts[0].From != root {
		t.Fatalf("the image's mount table: %+v, want one pivoted into %s", img.Mounts, root)
	}
	last := len(testutil.LogLines(t, c.Log))
	r := restoreOK(t, dir, c.Log)
	r.WaitTick(t, short, lastLogTick(t, c.Log)+3)
	checkContainerInside(t, c.Log, c.init, c.child, "box-pivot", last)
	after, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.init))
	if err != nil {
		t.Fatal(err)
	}
	if b, a := normalMountinfo(string(before)), normalMountinfo(string(after)); b != a {
		t.Errorf("the container's mount table, normalised, was\n%s\nis\n%s", b, a)
	}
	for _, l := range []string{"root", "cwd", "exe"} {
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/%s", c.init, l)); got != map[string]string{"root": "/", "cwd": "/w", "exe": "/w/container"}[l] {
			t.Errorf("the restored init's %s is %q", l, got)
		}
	}
	if b, err := os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/root", c.init), "tmp/note")); err != nil || string(b) != "note\n" {
		t.Errorf("/tmp/note inside: %q, %v", b, err)
	}
	containerReport(t, c.Log, c.init, "box-pivot")
	r.WaitExit(t, short)
}

// normalMountinfo is a mountinfo without mount ids, parent ids and
// devices (which differ in every namespace), one mount a line: root,
// point, options, type, source, superblock options; by mount point
// (mounts stacked at one in their order), as the order of mounts made
// apart (a bind made with move_mount) is not kept.
func normalMountinfo(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(l)
		sep := 0
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if len(f) < 6 || sep == 0 || sep+3 >= len(f)+1 {
			out = append(out, l)
			continue
		}
		out = append(out, strings.Join(append([]string{f[3], f[4], f[5]}, f[sep+1:]...), " "))
	}
	slices.SortStableFunc(out, func(a, b string) int { return strings.Compare(strings.Fields(a)[1], strings.Fields(b)[1]) })
	return strings.Join(out, "\n")
}

// TestContainerPivotRootLive: the container in a root filesystem of its
// own moves live to node B and back; its root, working directory and
// mount table, as it sees them, stay.
func TestContainerPivotRootLive(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	cmd, root := pivotCommand(t, "box-pivot-live", "")
	var before string
	liveContainerCmd(t, c, "box-pivot-live", filepath.Join(root, "log"), cmd, func(init int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", init))
		if err != nil {
			t.Fatal(err)
		}
		before = normalMountinfo(string(b))
	}, func(init int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", init))
		if err != nil {
			t.Fatal(err)
		}
		if a := normalMountinfo(string(b)); a != before {
			t.Errorf("the container's mount table, normalised, was\n%s\nis\n%s", before, a)
		}
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", init)); got != "/w" {
			t.Errorf("the init's working directory is %q", got)
		}
	})
}

// TestContainerPivotRootRefusesOutsideFile: a container process holding a
// file of the host opened before the pivot (outside its root: the same
// path inside is not that file) is refused; it runs on.
func TestContainerPivotRootRefusesOutsideFile(t *testing.T) {
	testutil.RequireRoot(t)
	// Under /var/tmp: inside, on the root filesystem (which has no /var),
	// not on the container's /tmp.
	dir, err := os.MkdirTemp("/var/tmp", "migrate-test-")
	if err != nil {
		testutil.Unavailable(t, "a directory under /var/tmp: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	leak := filepath.Join(dir, "outside")
	if err := os.WriteFile(leak, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, _ := startPivoted(t, "box-pivot-leak", leak)
	_, err = source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: t.TempDir(), Logger: testLogger(t)})
	var ue *source.UnsupportedMountError
	if !errors.As(err, &ue) || ue.Point != "/" || ue.PID != c.init {
		t.Fatalf("dump of a container holding a file from outside its root: %v, want an UnsupportedMountError of / for %d", err, c.init)
	}
	t.Logf("refused: %v", err)
	checkRunningUntraced(t, c.init)
	c.WaitTick(t, short, c.LastTick(t)+3)
}
