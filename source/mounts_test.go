package source

import (
	"os"
	"path"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// classify and propagation sort the mounts of a namespace as the restore
// rebuilds them, or refuse them.
func TestClassifyMounts(t *testing.T) {
	mine, err := proc.ReadMountInfo(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var root *proc.MountInfo
	for i := range mine {
		if mine[i].Point == "/" {
			root = &mine[i]
		}
	}
	if root == nil {
		t.Skip("no / in this process's mount table")
	}
	// A bind mount of a directory of the test's: its root in the
	// filesystem of the mount it is on.
	dir := t.TempDir()
	var under *proc.MountInfo
	for i := range mine {
		if m := &mine[i]; m.Point == "/" || strings.HasPrefix(dir, m.Point+"/") {
			under = m
		}
	}
	bindRoot := path.Join(under.Root, strings.TrimPrefix(dir, under.Point))
	for _, c := range []struct {
		name string
		m    proc.MountInfo
		kind string // "" for a refusal
		from string
	}{
		{"host", *root, core.MountHost, ""},
		{"tmpfs", proc.MountInfo{Dev: "0:9999", Root: "/", Point: "/x", FSType: "tmpfs"}, core.MountTmpfs, ""},
		{"proc", proc.MountInfo{Dev: "0:9998", Root: "/", Point: "/p", FSType: "proc"}, core.MountFresh, ""},
		{"bind", proc.MountInfo{Dev: under.Dev, Root: bindRoot, Point: "/b", FSType: under.FSType}, core.MountBind, dir},
		{"overlay", proc.MountInfo{Dev: "0:9997", Root: "/", Point: "/o", FSType: "overlay"}, "", ""},
		{"part of a tmpfs", proc.MountInfo{Dev: "0:9999", Root: "/sub", Point: "/y", FSType: "tmpfs"}, "", ""},
		{"part of a proc", proc.MountInfo{Dev: "0:9998", Root: "/sys", Point: "/q", FSType: "proc"}, "", ""},
	} {
		cm := core.Mount{}
		reason := classify(&cm, &c.m, mine, map[string]int{"0:9999": 1, "0:9998": 1}, false)
		if c.kind == "" {
			if reason == "" {
				t.Errorf("%s: kept as %s", c.name, cm.Kind)
			}
			continue
		}
		if reason != "" || cm.Kind != c.kind || cm.From != c.from {
			t.Errorf("%s: kind %q from %q (%s), want %q from %q", c.name, cm.Kind, cm.From, reason, c.kind, c.from)
		}
	}
	cm := core.Mount{}
	if reason := classify(&cm, &proc.MountInfo{Dev: "0:9999", Root: "/", Point: "/x2", FSType: "tmpfs"}, mine, map[string]int{"0:9999": 2}, true); reason == "" {
		t.Error("a tmpfs mounted twice in the namespace was kept")
	}
	// A bind of part of the namespace's own tmpfs, or proc: of the first.
	own := []core.Mount{{ID: 5, Kind: core.MountTmpfs, Dev: "0:9999", FSType: "tmpfs"}, {ID: 6, Kind: core.MountFresh, Dev: "0:9998", FSType: "proc"}, {ID: 7, Kind: core.MountBind, Dev: under.Dev, FSType: under.FSType}}
	for _, c := range []struct {
		m  proc.MountInfo
		of int
	}{{proc.MountInfo{Dev: "0:9999", Root: "/null", FSType: "tmpfs"}, 5}, {proc.MountInfo{Dev: "0:9998", Root: "/sys", FSType: "proc"}, 6}, {proc.MountInfo{Dev: under.Dev, Root: "/", FSType: under.FSType}, 0}} {
		of := ownSource(own, &c.m)
		if (of == nil && c.of != 0) || (of != nil && of.ID != c.of) {
			t.Errorf("the mount %+v binds %+v, want mount %d", c.m, of, c.of)
		}
	}

	host := map[int]bool{7: true}
	for _, c := range []struct {
		name           string
		optional       []string
		shared, slave  bool
		refused        bool
		groupsOfShared int
	}{
		{"private", nil, false, false, false, 0},
		{"shared alone", []string{"shared:30"}, true, false, false, 1},
		{"shared with another", []string{"shared:30"}, false, false, true, 2},
		{"shared with the host", []string{"shared:7"}, false, false, true, 1},
		{"slave of the host", []string{"master:7"}, false, true, false, 0},
		{"slave of another", []string{"master:31"}, false, false, true, 0},
		{"shared slave", []string{"shared:30", "master:7"}, false, false, true, 1},
		{"unbindable", []string{"unbindable"}, false, false, true, 0},
	} {
		cm := core.Mount{}
		m := proc.MountInfo{Optional: c.optional}
		reason := propagation(&cm, &m, host, map[int]int{30: c.groupsOfShared})
		if (reason != "") != c.refused || (!c.refused && (cm.Shared != c.shared || cm.Slave != c.slave)) {
			t.Errorf("%s: shared %v slave %v refused %q", c.name, cm.Shared, cm.Slave, reason)
		}
	}
}
