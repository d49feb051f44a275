package core

import "testing"

func TestValidateMounts(t *testing.T) {
	blobs := map[string]Blob{"files/tmpfs-1": {Size: 3}}
	good := func() *MountNS {
		return &MountNS{Mounts: []Mount{
			{Kind: MountHost, ID: 1, Point: "/", Root: "/"},
			{Kind: MountTmpfs, ID: 2, Point: "/t", Root: "/", FSType: "tmpfs", Files: []TmpfsFile{
				{Path: "d", Mode: sIFDIR | 0o755},
				{Path: "d/f", Mode: sIFREG | 0o644, Data: "files/tmpfs-1"},
				{Path: "h", Mode: sIFREG | 0o644, HardLink: "d/f"},
				{Path: "l", Mode: sIFLNK | 0o777, Link: "d/f"},
			}},
			{Kind: MountBind, ID: 3, Point: "/b", Root: "/x", From: "/srv/x"},
			{Kind: MountFresh, ID: 4, Point: "/p", Root: "/", FSType: "proc", Dev: "0:40"},
			{Kind: MountOwnBind, ID: 5, Parent: 4, Point: "/p/sys", Root: "/sys", FSType: "proc", Dev: "0:40", Of: 4},
			{Kind: MountTmpfs, ID: 6, Point: "/dev", Root: "/", FSType: "tmpfs", Files: []TmpfsFile{
				{Path: "null", Mode: sIFCHR | 0o666, Rdev: 1<<8 | 3},
			}},
		}}
	}
	if err := validateMounts(good(), blobs); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(ns *MountNS){
		"relative point":        func(ns *MountNS) { ns.Mounts[1].Point = "t" },
		"dotdot point":          func(ns *MountNS) { ns.Mounts[1].Point = "/t/../etc" },
		"kind":                  func(ns *MountNS) { ns.Mounts[0].Kind = "overlay" },
		"id twice":              func(ns *MountNS) { ns.Mounts[2].ID = 1 },
		"bind from":             func(ns *MountNS) { ns.Mounts[2].From = "srv" },
		"fresh type":            func(ns *MountNS) { ns.Mounts[3].FSType = "ext4" },
		"escaping file":         func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "../f" },
		"absolute file":         func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "/f" },
		"before its dir":        func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "e/f" },
		"unknown blob":          func(ns *MountNS) { ns.Mounts[1].Files[1].Data = "files/other" },
		"device file":           func(ns *MountNS) { ns.Mounts[1].Files[1].Mode = 0o020644 },
		"hard link ahead":       func(ns *MountNS) { ns.Mounts[1].Files[2].HardLink = "z" },
		"hard link to dir":      func(ns *MountNS) { ns.Mounts[1].Files[2].HardLink = "d" },
		"files in a bind":       func(ns *MountNS) { ns.Mounts[2].Files = ns.Mounts[1].Files },
		"empty link":            func(ns *MountNS) { ns.Mounts[1].Files[3].Link = "" },
		"no mounts":             func(ns *MountNS) { ns.Mounts = nil },
		"container bind":        func(ns *MountNS) { ns.Mounts[2].Container = true },
		"container host":        func(ns *MountNS) { ns.Mounts[0].Container = true },
		"container shared":      func(ns *MountNS) { ns.Mounts[3].Container, ns.Mounts[3].Shared = true, true },
		"outside on one inside": func(ns *MountNS) { ns.Mounts[3].Container = true },
		"own bind of a later":   func(ns *MountNS) { ns.Mounts[4].Of = 6 },
		"own bind of a bind":    func(ns *MountNS) { ns.Mounts[4].Of = 3 },
		"own bind other fs":     func(ns *MountNS) { ns.Mounts[4].Dev = "0:41" },
		"own bind escaping":     func(ns *MountNS) { ns.Mounts[4].Root = "/../x" },
		"of but not own bind":   func(ns *MountNS) { ns.Mounts[3].Of = 1 },
		"disk device":           func(ns *MountNS) { ns.Mounts[5].Files[0].Rdev = 8 << 8 },
		"device of a file":      func(ns *MountNS) { ns.Mounts[1].Files[1].Rdev = 1<<8 | 3 },
		"pivoted on a host":     func(ns *MountNS) { ns.Pivoted = true },
		"pivoted, host inside": func(ns *MountNS) {
			ns.Pivoted, ns.Mounts[0] = true, Mount{Kind: MountBind, ID: 1, Point: "/", Root: "/r", From: "/srv/r"}
			ns.Mounts[2].Kind = MountHost
		},
	} {
		ns := good()
		change(ns)
		if err := validateMounts(ns, blobs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestValidateContainerMounts: a mount of a container's namespaces only
// in the image of a container with them.
func TestValidateContainerMounts(t *testing.T) {
	img := func(fstype string, ns *Namespaces) *Image {
		return &Image{Namespaces: ns, Mounts: &MountNS{Mounts: []Mount{
			{Kind: MountHost, ID: 1, Point: "/", Root: "/"},
			{Kind: MountFresh, ID: 2, Point: "/p", Root: "/", FSType: fstype, Container: true},
		}}}
	}
	withPID := &Namespaces{PID: &PIDNamespace{}}
	withIPC := &Namespaces{PID: &PIDNamespace{}, IPC: &IPCNamespace{}}
	for _, c := range []struct {
		img *Image
		ok  bool
	}{
		{img("proc", withPID), true},
		{img("mqueue", withIPC), true},
		{img("proc", nil), false},
		{img("mqueue", withPID), false},
	} {
		if err := validateContainerMounts(c.img); (err == nil) != c.ok {
			t.Errorf("%s in %+v: %v", c.img.Mounts.Mounts[1].FSType, c.img.Namespaces, err)
		}
	}
}
