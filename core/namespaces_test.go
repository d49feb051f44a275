package core

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestRenumberOuter: a container's processes, threads and what names them
// (parents, groups, sessions, pidfds, owners, timers, shared
// descriptions, the PID namespace's table) follow new outer PIDs; what is
// outside the container stays; the image is still valid.
func TestRenumberOuter(t *testing.T) {
	img := &Image{
		Pages:   PagesInfo{File: PagesFile},
		Process: Process{PID: 100, PPID: 7, PGID: 100, SID: 6, Threads: []Thread{{TID: 100}, {TID: 102}}},
		Tree: []Process{{PID: 101, PPID: 100, PGID: 100, SID: 6, Threads: []Thread{{TID: 101}},
			Pages:       &PagesInfo{File: "pages-101.img"},
			FDs:         []FD{{FD: 3, Kind: FDPidfd, PidfdPID: 100, Owner: &FDOwner{Type: 0, PID: 102}, Key: "100:4"}},
			PosixTimers: []PosixTimer{{ID: 1, Notify: 4, TID: 101}}}},
		Namespaces: &Namespaces{PID: &PIDNamespace{IDs: []NSID{{100, 1}, {102, 3}, {101, 2}}}},
	}
	img.RenumberOuter(map[int]int{100: 500, 101: 501, 102: 502})
	p, k := img.Process, img.Tree[0]
	f := k.FDs[0]
	got := []int{p.PID, p.PPID, p.PGID, p.SID, p.Threads[1].TID, k.PID, k.PPID, k.PGID, k.SID, f.PidfdPID, f.Owner.PID, k.PosixTimers[0].TID, img.Namespaces.PID.IDs[1].Outer}
	want := []int{500, 7, 500, 6, 502, 501, 500, 500, 6, 500, 502, 501, 502}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("after renumbering: %v, want %v", got, want)
		}
	}
	if f.Key != "500:4" || k.Pages.File != "pages-101.img" {
		t.Errorf("key %q, pages %q", f.Key, k.Pages.File)
	}
	if err := validateNamespaces(img); err != nil {
		t.Errorf("renumbered namespaces: %v", err)
	}
	if in, ok := img.Namespaces.PID.Inner(502); !ok || in != 3 {
		t.Errorf("inner of 502: %d, %v", in, ok)
	}
}

// withNS makes validImage a container's image.
func withNS(i *Image) {
	i.Namespaces = &Namespaces{
		PID: &PIDNamespace{IDs: []NSID{{100, 1}, {101, 4}, {102, 2}, {103, 3}}},
		UTS: &UTSNamespace{Hostname: "box", Domainname: "(none)"},
		IPC: &IPCNamespace{Sysctls: map[string]string{"msgmax": "8192", "sem": "32000\t1024000000\t500\t32000"},
			Sems: []SemSet{{ID: 0, Key: 7, Mode: 0o640, Values: []uint16{1, 5}}},
			Msgs: []MsgQueue{{ID: 0, Key: 8, Mode: 0o600, QBytes: 16384, Messages: []Message{{Type: 1, Text: []byte("a")}}}}},
		Cgroup: &CgroupNamespace{Roots: []Cgroup{{Path: "/box"}, {Controllers: "pids", Path: "/"}}},
	}
}

// TestDecodeImageNamespaces: a container's image decodes; one whose
// namespaces are inconsistent or out of the kernel's bounds is refused.
func TestDecodeImageNamespaces(t *testing.T) {
	good := validImage()
	withNS(good)
	b, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeImage(bytes.NewReader(b)); err != nil {
		t.Fatalf("valid container image refused: %v", err)
	}
	bad := []func(*Image){
		func(i *Image) { i.Namespaces.PID.IDs[0].Inner = 7 },                                 // the root is not 1
		func(i *Image) { i.Namespaces.PID.IDs[1].Inner = 1 },                                 // twice
		func(i *Image) { i.Namespaces.PID.IDs = i.Namespaces.PID.IDs[:3] },                   // the zombie missing
		func(i *Image) { i.Namespaces.PID.IDs = append(i.Namespaces.PID.IDs, NSID{999, 9}) }, // not of the image
		func(i *Image) { i.Namespaces.PID.IDs[2].Inner = 1 << 23 },
		func(i *Image) { i.Namespaces.PID = nil },
		func(i *Image) { i.Namespaces.UTS.Hostname = string(make([]byte, 65)) },
		func(i *Image) { i.Namespaces.IPC.Sysctls["core_pattern"] = "|/bin/sh" },
		func(i *Image) { i.Namespaces.IPC.Sysctls["msgmax"] = "1\n2" },
		func(i *Image) { i.Namespaces.IPC.Sems[0].Values = []uint16{40000} },
		func(i *Image) { i.Namespaces.IPC.Sems[0].Values = nil },
		func(i *Image) { i.Namespaces.IPC.Sems[0].Mode = 0o4777 },
		func(i *Image) { i.Namespaces.IPC.Sems = append(i.Namespaces.IPC.Sems, i.Namespaces.IPC.Sems[0]) },
		func(i *Image) { i.Namespaces.IPC.Msgs[0].Messages[0].Type = 0 },
		func(i *Image) { i.Namespaces.IPC.Msgs[0].QBytes = 1 << 30 },
		func(i *Image) { i.Namespaces.IPC.Msgs[0].ID = -1 },
		func(i *Image) { i.Namespaces.Cgroup.Roots = nil },
		func(i *Image) { i.Namespaces.Cgroup.Roots[0].Path = "/box/../etc" },
		func(i *Image) { i.Namespaces.Cgroup.Roots[0].Path = "box" },
		func(i *Image) { i.Namespaces.Cgroup.Roots[1].Controllers = "" },    // a hierarchy twice
		func(i *Image) { i.Namespaces.Cgroup.Roots[1].Controllers = "a:b" }, // not a hierarchy's name
	}
	for n, mutate := range bad {
		img := validImage()
		withNS(img)
		mutate(img)
		b, err := json.Marshal(img)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeImage(bytes.NewReader(b)); err == nil {
			t.Errorf("bad container image %d accepted", n)
		}
	}
}
