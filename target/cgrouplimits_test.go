package target

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
)

// TestMakeCgroupExisting: a cgroup that exists is compared with the
// image's limits, file by file; with other limits it is refused naming the
// file and both values, or given the image's with apply. A directory made
// of plain files stands for the cgroup (the comparison only reads and
// writes them).
func TestMakeCgroupExisting(t *testing.T) {
	mount := t.TempDir()
	cg := filepath.Join(mount, "svc", "app")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, v string) {
		if err := os.WriteFile(filepath.Join(cg, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory.max", "1048576")
	write("pids.max", "max")
	cl := core.CgroupLimits{Path: "/svc/app", Files: map[string]string{"memory.max": "2097152", "pids.max": "max"}}
	ss := &session{log: slog.New(slog.DiscardHandler)}

	err := ss.makeCgroup(1, mount, "svc/app", cl, false)
	var ce *CgroupError
	if !errors.As(err, &ce) || ce.File != "memory.max" || ce.Want != "2097152" || ce.Have != "1048576" || ce.Path != "/svc/app" {
		t.Fatalf("check: %v (%#v), want a *CgroupError for memory.max, 2097152 in the image, 1048576 here", err, ce)
	}
	if err := ss.makeCgroup(1, mount, "svc/app", cl, true); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(cg, "memory.max")); strings.TrimSpace(string(b)) != "2097152" {
		t.Errorf("memory.max after apply %q, want 2097152", b)
	}
	if err := ss.makeCgroup(1, mount, "svc/app", cl, false); err != nil {
		t.Errorf("check once the limits are the image's: %v", err)
	}
	if len(ss.cgroupsMade) != 0 {
		t.Errorf("created %v, but every cgroup existed", ss.cgroupsMade)
	}

	// A symbolic link on the way is never followed, whatever the image
	// says.
	if err := os.Symlink(cg, filepath.Join(mount, "link")); err != nil {
		t.Fatal(err)
	}
	err = ss.makeCgroup(1, mount, "link", core.CgroupLimits{Path: "/link", Files: cl.Files}, true)
	if !errors.As(err, &ce) {
		t.Fatalf("through a symbolic link: %v, want a *CgroupError", err)
	}
	if len(ss.cgroupsMade) != 0 {
		t.Errorf("created %v through a symbolic link", ss.cgroupsMade)
	}
}

// TestRelocateCgroups: --cgroup-root puts the v2 paths of processes,
// threads and limits under it, and leaves v1 hierarchies alone.
func TestRelocateCgroups(t *testing.T) {
	img := &core.Image{
		Process:      core.Process{Cgroups: []core.Cgroup{{Path: "/a"}, {Controllers: "pids", Path: "/p"}}, Threads: []core.Thread{{Cgroups: []core.Cgroup{{Path: "/a/t"}}}}},
		Tree:         []core.Process{{Cgroups: []core.Cgroup{{Path: "/"}}}},
		CgroupLimits: []core.CgroupLimits{{Path: "/a"}},
	}
	if err := relocateCgroups(img, "/r/s"); err != nil {
		t.Fatal(err)
	}
	got := []string{img.Process.Cgroups[0].Path, img.Process.Cgroups[1].Path, img.Process.Threads[0].Cgroups[0].Path, img.Tree[0].Cgroups[0].Path, img.CgroupLimits[0].Path}
	want := []string{"/r/s/a", "/p", "/r/s/a/t", "/r/s", "/r/s/a"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("paths %q, want %q", got, want)
			break
		}
	}
	for _, bad := range []string{"r", "/r/../s", "/r/"} {
		if err := relocateCgroups(&core.Image{}, bad); err == nil {
			t.Errorf("cgroup root %q accepted", bad)
		}
	}
}

// TestDropCgroups: --cgroups ignore forgets every process's and thread's
// cgroups and the limits (none joined, made or compared), and refuses a
// container's cgroup namespace, which is made at its cgroups.
func TestDropCgroups(t *testing.T) {
	img := &core.Image{
		Process:      core.Process{PID: 1, Cgroups: []core.Cgroup{{Controllers: "memory", Path: "/a"}}, Threads: []core.Thread{{TID: 1, Cgroups: []core.Cgroup{{Path: "/b"}}}}},
		Tree:         []core.Process{{PID: 2, Cgroups: []core.Cgroup{{Path: "/c"}}}},
		CgroupLimits: []core.CgroupLimits{{Path: "/c"}},
	}
	if err := dropImageCgroups(img); err != nil {
		t.Fatal(err)
	}
	if img.Process.Cgroups == nil || len(img.Process.Cgroups) != 0 || img.Process.Threads[0].Cgroups != nil || len(img.Tree[0].Cgroups) != 0 || img.CgroupLimits != nil {
		t.Errorf("cgroups left: %+v %+v %+v", img.Process, img.Tree, img.CgroupLimits)
	}
	img.Namespaces = &core.Namespaces{Cgroup: &core.CgroupNamespace{Roots: []core.Cgroup{{Path: "/c"}}}}
	var ce *CgroupError
	if err := dropImageCgroups(img); !errors.As(err, &ce) {
		t.Errorf("a cgroup namespace: %v, want a *CgroupError", err)
	}
}
