package target

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

func TestMountFlags(t *testing.T) {
	f, err := mountFlags("ro,nosuid,nodev,noexec,relatime")
	if err != nil || f != unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RELATIME {
		t.Errorf("flags %#x, %v", f, err)
	}
	if f, err := mountFlags("rw"); err != nil || f != unix.MS_STRICTATIME {
		t.Errorf("rw: flags %#x, %v; want strict access times", f, err)
	}
	if _, err := mountFlags("rw,frobnicate"); err == nil {
		t.Error("an unknown option was taken")
	}
	if d := superData("rw,size=1024k,mode=750"); d != "size=1024k,mode=750" {
		t.Errorf("superData: %q", d)
	}
}

// diffMounts compares tables without mount ids and peer group numbers,
// devices only of the host's and bound mounts, stacked mounts in order.
func TestDiffMounts(t *testing.T) {
	want := []core.Mount{
		{Kind: core.MountHost, ID: 10, Parent: 1, Dev: "8:1", Root: "/", Point: "/", Options: "rw", FSType: "ext4", Source: "/dev/sda", Super: "rw"},
		{Kind: core.MountTmpfs, ID: 11, Parent: 10, Dev: "0:50", Root: "/", Point: "/t", Options: "rw,nosuid", FSType: "tmpfs", Source: "box", Super: "rw,size=1024k", Shared: true},
		{Kind: core.MountBind, ID: 12, Parent: 10, Dev: "8:1", Root: "/src", Point: "/b", Options: "ro", FSType: "ext4", Source: "/dev/sda", Super: "rw"},
		{Kind: core.MountFresh, ID: 13, Parent: 11, Dev: "0:51", Root: "/", Point: "/t/p", Options: "rw", FSType: "proc", Source: "proc", Super: "rw"},
	}
	got := []proc.MountInfo{
		{ID: 100, Parent: 7, Dev: "8:1", Root: "/", Point: "/", Options: "rw", FSType: "ext4", Source: "/dev/sda", Super: "rw"},
		{ID: 103, Parent: 101, Dev: "0:90", Root: "/", Point: "/t/p", Options: "rw", FSType: "proc", Source: "proc", Super: "rw"},
		{ID: 102, Parent: 100, Dev: "8:1", Root: "/src", Point: "/b", Options: "ro", FSType: "ext4", Source: "/dev/sda", Super: "rw"},
		{ID: 101, Parent: 100, Dev: "0:91", Root: "/", Point: "/t", Options: "rw,nosuid", Optional: []string{"shared:77"}, FSType: "tmpfs", Source: "box", Super: "rw,size=1024k"},
	}
	if d := diffMounts(want, got); d != "" {
		t.Errorf("the same table differs: %s", d)
	}
	for _, change := range []func(g []proc.MountInfo){
		func(g []proc.MountInfo) { g[2].Dev = "8:2" },          // another device bound
		func(g []proc.MountInfo) { g[3].Optional = nil },       // private
		func(g []proc.MountInfo) { g[3].Super = "rw,size=2m" }, // other size
		func(g []proc.MountInfo) { g[1].Parent = 100 },         // other parent
		func(g []proc.MountInfo) { g[2].Options = "rw" },       // writable
		func(g []proc.MountInfo) { g[1].Point = "/t/q" },       // elsewhere
	} {
		g := append([]proc.MountInfo(nil), got...)
		change(g)
		if diffMounts(want, g) == "" {
			t.Errorf("%+v: no difference found", g)
		}
	}
	if diffMounts(want, got[:3]) == "" {
		t.Error("a missing mount was not found")
	}
}

// TestNoSymlinks: a path through a symbolic link, or ending on one, is
// refused (an image's own bind must not be led out of the container);
// one without is taken.
func TestNoSymlinks(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "real", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := noSymlinks(os.Getpid(), filepath.Join(dir, "real", "sub")); err != nil {
		t.Errorf("a path without links: %v", err)
	}
	for _, p := range []string{filepath.Join(dir, "link", "passwd"), filepath.Join(dir, "link"), filepath.Join(dir, "missing")} {
		if err := noSymlinks(os.Getpid(), p); err == nil {
			t.Errorf("%s taken", p)
		}
	}
}
