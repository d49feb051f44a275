package core

import "testing"

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
