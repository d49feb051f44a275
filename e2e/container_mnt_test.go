package e2e

// A container with a mount namespace of its own, made by `unshare --pid
// --fork --mount-proc --uts --ipc`: its /proc is a proc of its PID
// namespace, mounted again from inside the new one on restore, and a
// tmpfs with a file comes back with it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// containerProcPIDs lists the processes the container whose init is pid
// here sees in its /proc (through the init's root, in its mount
// namespace).
func containerProcPIDs(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/proc", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// checkContainerProc checks that the container of init pid sees its two
// processes, 1 and 2, in its /proc, and file f of its tmpfs at dir.
func checkContainerProc(t *testing.T, pid int, dir string) {
	t.Helper()
	if got := containerProcPIDs(t, pid); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("the container's /proc lists processes %v, want [1 2]", got)
	}
	if dir == "" {
		return
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/f", pid, dir)); err != nil || string(b) != "inside" {
		t.Errorf("the container's tmpfs %s: file f %q, %v", dir, b, err)
	}
}

// containerTmpfs mounts a tmpfs at dir in the mount namespace of process
// pid, and writes file f in it.
func containerTmpfs(t *testing.T, pid int, dir string) {
	t.Helper()
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
	}
	if out, err := exec.Command(nsenter, "--target", fmt.Sprint(pid), "--mount", "--", "mount", "-t", "tmpfs", "-o", "size=1m", "boxtmp", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs in the container: %v: %s", err, out)
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/root%s/f", pid, dir), []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// imageProc checks that img's mount table has the container's proc at
// /proc, mounted from inside, and a tmpfs at dir.
func imageProc(t *testing.T, img *core.Image, dir string) {
	t.Helper()
	if img.Mounts == nil {
		t.Fatal("the image has no mount namespace")
	}
	var proc, tmpfs bool
	for _, m := range img.Mounts.Mounts {
		if m.Point == "/proc" && m.Container {
			proc = m.FSType == "proc" && m.Kind == core.MountFresh
		}
		if m.Point == dir && m.Kind == core.MountTmpfs {
			tmpfs = true
		}
	}
	if !proc || !tmpfs {
		t.Errorf("the image's mounts: the container's proc at /proc %v, a tmpfs at %s %v: %+v", proc, dir, tmpfs, img.Mounts.Mounts)
	}
}

// TestContainerMountProc: a container with a mount namespace of its own
// (its /proc a proc of its PID namespace, a tmpfs, an mqueue of its IPC
// namespace) is dumped and restored: its /proc lists its own two
// processes again, not the host's, its tmpfs has its file, Check found
// its mqueue its new IPC namespace's, and the PIDs, host name and its own
// checks are as before.
func TestContainerMountProc(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	mq := t.TempDir()
	c := startContainer(t, "box-proc", []string{"--mount-proc"}, nil)
	containerTmpfs(t, c.init, dir)
	checkContainerProc(t, c.init, dir)
	// An mqueue of the container's IPC namespace.
	if out, err := exec.Command("nsenter", "--target", fmt.Sprint(c.init), "--mount", "--ipc", "--", "mount", "-t", "mqueue", "boxmq", mq).CombinedOutput(); err != nil {
		t.Fatalf("mount an mqueue in the container: %v: %s", err, out)
	}
	imgDir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: imgDir, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the container's init %d: %v", c.init, err)
	}
	c.Reap(t)
	last := len(testutil.LogLines(t, c.Log))
	img, err := core.ReadImage(imgDir)
	if err != nil {
		t.Fatal(err)
	}
	imageProc(t, img, dir)
	if i := slices.IndexFunc(img.Mounts.Mounts, func(m core.Mount) bool { return m.Point == mq }); i < 0 || !img.Mounts.Mounts[i].Container {
		t.Errorf("the container's mqueue at %s is not in the image as one of its namespaces': %+v", mq, img.Mounts.Mounts)
	}
	r := restoreOK(t, imgDir, c.Log)
	r.WaitTick(t, short, lastLogTick(t, c.Log)+5)
	checkContainerInside(t, c.Log, c.init, c.child, "box-proc", last)
	checkContainerProc(t, c.init, dir)
	mine, _ := os.Readlink("/proc/self/ns/mnt")
	if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.init)); its == mine {
		t.Error("the restored container is in migrate's mount namespace")
	}
	containerReport(t, c.Log, c.init, "box-proc")
	r.WaitExit(t, short)
}

// TestContainerMountProcLive: the same container moves live from node A
// to node B and back; after each hop its /proc lists its own processes,
// its tmpfs has its file, and its checks pass.
func TestContainerMountProcLive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "box") // before the nodes: they share it
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, cluster.Options{})
	liveContainer(t, c, "box-plive", []string{"--mount-proc"}, func(init int) {
		containerTmpfs(t, init, dir)
		checkContainerProc(t, init, dir)
	}, func(init int) { checkContainerProc(t, init, dir) })
}

// TestContainerMountProcCheckFails: a restored container whose proc
// differs from its image's (the image edited: hidepid=2 in its superblock
// options) fails Check, and the restore ends with every process of the
// container killed and reaped, not hung waiting for them.
func TestContainerMountProcCheckFails(t *testing.T) {
	testutil.RequireRoot(t)
	c := startContainer(t, "box-bad", []string{"--mount-proc"}, nil)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: dir, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the container's init %d: %v", c.init, err)
	}
	c.Reap(t)
	edited := false
	editMeta(t, dir, func(m map[string]any) {
		for _, mt := range m["mounts"].(map[string]any)["mounts"].([]any) {
			if mm := mt.(map[string]any); mm["container"] == true && mm["fstype"] == "proc" {
				mm["super"], edited = "rw,hidepid=2", true
			}
		}
	})
	if !edited {
		t.Fatal("the image has no proc of the container's")
	}
	kids := testutil.Children()
	done := make(chan error, 1)
	go func() {
		_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t), Check: true})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(short):
		t.Fatalf("the restore of a container that fails Check did not end in %v", short)
	}
	var ce *target.CheckError
	if !errors.As(err, &ce) {
		t.Fatalf("restore: %v, want a CheckError", err)
	}
	t.Logf("refused: %v", err)
	for _, pid := range []int{c.init, c.child} {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("process %d is there after the failed restore", pid)
		}
	}
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children of the test process after the failed restore: %v, before %v", got, kids)
	}
}
