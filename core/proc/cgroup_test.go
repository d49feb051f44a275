package proc

import (
	"errors"
	"os"
	"reflect"
	"slices"
	"testing"
)

func TestParseCgroups(t *testing.T) {
	in := "12:cpu,cpuacct:/a/b\n9:name=systemd:/\n0::/x:y/with space\n"
	got, err := ParseCgroups([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Cgroup{{12, "cpu,cpuacct", "/a/b"}, {9, "name=systemd", "/"}, {0, "", "/x:y/with space"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"1:cpu\n", "x::/\n", "99999999::/\n"} {
		if _, err := ParseCgroups([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: err %v, want a ParseError", bad, err)
		}
	}
}

func TestParseCgroupMounts(t *testing.T) {
	mi := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/sys\040temd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 /sub /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
`
	got, err := ParseCgroupMounts([]byte(mi), map[string]bool{"cpu": true, "cpuacct": true})
	if err != nil {
		t.Fatal(err)
	}
	want := []CgroupMount{
		{Controllers: "cpu,cpuacct", Root: "/", Dir: "/sys/fs/cgroup/cpu"},
		{Controllers: "name=systemd", Root: "/", Dir: "/sys/fs/cgroup/sys temd"},
		{Controllers: "", Root: "/sub", Dir: "/sys/fs/cgroup/unified"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

// TestReadCgroupsReal reads this process's cgroups and finds a mount for
// each hierarchy it is in.
func TestReadCgroupsReal(t *testing.T) {
	cgs, err := ReadCgroups(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(cgs) == 0 {
		t.Fatal("no cgroups read")
	}
	mounts, err := ReadCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cgs {
		found := false
		for _, m := range mounts {
			found = found || m.Controllers == c.Controllers
		}
		if !found && c.Controllers != "" {
			t.Errorf("hierarchy %q (%s) has no mount in %+v", c.Controllers, c.Path, mounts)
		}
	}
}

func FuzzParseCgroups(f *testing.F) {
	f.Add([]byte("12:cpu,cpuacct:/a/b\n0::/\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cgs, err := ParseCgroups(b)
		if err != nil {
			checkErr(t, err)
			return
		}
		for _, c := range cgs {
			if c.ID < 0 {
				t.Fatalf("negative id %d", c.ID)
			}
		}
	})
}

func FuzzParseCgroupMounts(f *testing.F) {
	f.Add([]byte("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 31 0:38 / /u rw - cgroup2 cgroup2 rw\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseCgroupMounts(b, map[string]bool{"cpu": true})
	})
}

func TestCgroupNSRoots(t *testing.T) {
	outer := []Cgroup{{ID: 0, Path: "/box/app"}, {ID: 4, Controllers: "memory", Path: "/box"}, {ID: 8, Controllers: "pids", Path: "/"}}
	inner := []Cgroup{{ID: 0, Path: "/app"}, {ID: 4, Controllers: "memory", Path: "/"}, {ID: 8, Controllers: "pids", Path: "/"}}
	got, err := cgroupNSRoots(outer, inner)
	if err != nil {
		t.Fatal(err)
	}
	want := []Cgroup{{ID: 0, Path: "/box"}, {ID: 4, Controllers: "memory", Path: "/box"}, {ID: 8, Controllers: "pids", Path: "/"}}
	if !slices.Equal(got, want) {
		t.Errorf("roots %+v, want %+v", got, want)
	}
	if got, err := cgroupNSRoots([]Cgroup{{Path: "/app"}}, []Cgroup{{Path: "/app"}}); err != nil || got[0].Path != "/" {
		t.Errorf("a namespace rooted at the hierarchy's root: %+v, %v", got, err)
	}
	var oe *OutsideCgroupNSError
	if _, err := cgroupNSRoots([]Cgroup{{Path: "/other"}}, []Cgroup{{Path: "/../other"}}); !errors.As(err, &oe) {
		t.Errorf("a process outside its namespace's root: %v, want an OutsideCgroupNSError", err)
	}
	for _, in := range []string{"/xapp", "app", "/box/app/more"} {
		if _, err := cgroupNSRoots([]Cgroup{{Path: "/box/app"}}, []Cgroup{{Path: in}}); err == nil {
			t.Errorf("outside /box/app, inside %s: no error", in)
		}
	}
	if _, err := cgroupNSRoots(outer, inner[:1]); err == nil {
		t.Error("views of different hierarchies: no error")
	}
}
