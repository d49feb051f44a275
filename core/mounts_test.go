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
			{Kind: MountFresh, ID: 4, Point: "/p", Root: "/", FSType: "proc"},
		}}
	}
	if err := validateMounts(good(), blobs); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(ns *MountNS){
		"relative point":   func(ns *MountNS) { ns.Mounts[1].Point = "t" },
		"dotdot point":     func(ns *MountNS) { ns.Mounts[1].Point = "/t/../etc" },
		"kind":             func(ns *MountNS) { ns.Mounts[0].Kind = "overlay" },
		"id twice":         func(ns *MountNS) { ns.Mounts[2].ID = 1 },
		"bind from":        func(ns *MountNS) { ns.Mounts[2].From = "srv" },
		"fresh type":       func(ns *MountNS) { ns.Mounts[3].FSType = "ext4" },
		"escaping file":    func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "../f" },
		"absolute file":    func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "/f" },
		"before its dir":   func(ns *MountNS) { ns.Mounts[1].Files[1].Path = "e/f" },
		"unknown blob":     func(ns *MountNS) { ns.Mounts[1].Files[1].Data = "files/other" },
		"device file":      func(ns *MountNS) { ns.Mounts[1].Files[1].Mode = 0o020644 },
		"hard link ahead":  func(ns *MountNS) { ns.Mounts[1].Files[2].HardLink = "z" },
		"hard link to dir": func(ns *MountNS) { ns.Mounts[1].Files[2].HardLink = "d" },
		"files in a bind":  func(ns *MountNS) { ns.Mounts[2].Files = ns.Mounts[1].Files },
		"empty link":       func(ns *MountNS) { ns.Mounts[1].Files[3].Link = "" },
		"no mounts":        func(ns *MountNS) { ns.Mounts = nil },
	} {
		ns := good()
		change(ns)
		if err := validateMounts(ns, blobs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
