package target

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/transport"
)

// selfProcess describes this test process as a live source would: its
// executable, directories, areas (from /proc/self/maps) and a few fds.
func selfProcess(t testing.TB) core.Process {
	t.Helper()
	pid := os.Getpid()
	exe, err := os.Executable()
	if err != nil {
		t.Skipf("no executable path: %v", err)
	}
	cwd, _ := os.Getwd()
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	p := core.Process{
		PID: pid, PPID: os.Getppid(), Comm: "target.test",
		Exe: core.FileRef{Path: exe}, Cwd: cwd, Root: "/", Cmdline: os.Args,
		Threads:    []core.Thread{{TID: pid, Xstate: make([]byte, 1024)}},
		Sigactions: make([]core.Sigaction, 64),
		FDs: []core.FD{
			{FD: 0, Kind: core.FDChar, File: &core.FileRef{Path: "/dev/null"}},
			{FD: 3, Kind: core.FDPipe, Pipe: 77},
			{FD: 4, Kind: core.FDSocket, Socket: &core.Socket{Family: 1, Type: 1, State: core.SockListen,
				Name: []byte("/run/x.sock"), File: &core.SockFile{Path: "/run/x.sock"}}},
			{FD: 5, Kind: core.FDInotify, Inotify: []core.InotifyWatch{{WD: 1, Path: "/etc", Mask: 2}}},
		},
	}
	for _, m := range maps {
		v := core.VMA{Start: m.Start, End: m.End, Prot: m.Prot, Flags: 2, Kind: core.VMAAnon, Offset: m.Offset &^ 4095}
		switch {
		case m.Path == "[vdso]":
			v.Kind, v.Name = core.VMAVDSO, m.Path
		case strings.HasPrefix(m.Path, "[vvar"):
			v.Kind, v.Name = core.VMAVVar, m.Path
		case strings.HasPrefix(m.Path, "/"):
			v.Kind = core.VMAFile
			v.File = &core.FileRef{Path: m.Path, Deleted: m.Deleted}
		default:
			v.Name = m.Path
		}
		if m.End > 1<<47 {
			continue // [vsyscall]
		}
		p.VMAs = append(p.VMAs, v)
	}
	return p
}

// selfState is the final state of p, a live source's: its pipe holds
// queued bytes.
func selfState(t testing.TB, p core.Process, queued []byte) handoff.LiveState {
	t.Helper()
	name := core.FilesDir + "/pipe-77"
	for i := range p.FDs {
		if p.FDs[i].Kind == core.FDPipe {
			p.FDs[i].Data = name
		}
	}
	blob, err := core.HashBlob(bytes.NewReader(queued))
	if err != nil {
		t.Fatal(err)
	}
	img := core.Image{Kind: core.ImageKind, Version: core.ImageVersion, Arch: runtime.GOARCH,
		Pages: core.PagesInfo{File: core.PagesFile, Codec: "s2", Rounds: 2}, Process: p,
		Blobs: map[string]core.Blob{name: blob}}
	return handoff.LiveState{Image: img, Blobs: map[string][]byte{name: queued}}
}

// TestSelfProcessAccepted: the fuzz seeds are accepted (else fuzzing
// would explore refusals only).
func TestSelfProcessAccepted(t *testing.T) {
	p := selfProcess(t)
	b, _ := json.Marshal(handoff.LiveLayout{Process: p})
	if _, err := decodeLayout(b, p.PID, nil); err != nil {
		t.Fatalf("layout: %v", err)
	}
	b, _ = json.Marshal(selfState(t, p, []byte("q")))
	if _, err := decodeState(b, p.PID, nil); err != nil {
		t.Fatalf("state: %v", err)
	}
}

// FuzzLiveLayout feeds the target's real decoding of a Layout's body, with
// its checks, any bytes: it must never panic, never allocate without
// bound, and what it accepts must hold only absolute, clean paths and pass
// the checks again after a round trip.
func FuzzLiveLayout(f *testing.F) {
	p := selfProcess(f)
	b, _ := json.Marshal(handoff.LiveLayout{Process: p})
	f.Add(b, p.PID)
	b, _ = json.Marshal(handoff.LiveLayout{Process: p, Mounts: &core.MountNS{Mounts: []core.Mount{
		{Kind: core.MountHost, ID: 1, Point: "/", Root: "/"}, {Kind: core.MountTmpfs, ID: 2, Parent: 1, Point: "/t", Root: "/", FSType: "tmpfs"},
		{Kind: core.MountBind, ID: 3, Parent: 1, Point: "/b", Root: "/x", From: "/x"}}}})
	f.Add(b, p.PID)
	f.Add([]byte(`{"process":{"pid":7,"threads":[{"tid":7}],"exe":{"path":"/bin/true"},"cwd":"/","root":"/","vmas":[{},{}]}}`), 7)
	b, _ = json.Marshal(handoff.LiveLayout{Process: p, Streams: 3})
	f.Add(b, p.PID)
	f.Fuzz(func(t *testing.T, body []byte, pid int) {
		ll, err := decodeLayout(body, pid, nil)
		if err != nil {
			return
		}
		if ll.Process.PID != pid {
			t.Fatalf("layout of %d accepted for %d", ll.Process.PID, pid)
		}
		if ll.Streams < 0 || ll.Streams > handoff.MaxPageStreams {
			t.Fatalf("layout with %d page streams accepted", ll.Streams)
		}
		again, err := json.Marshal(ll)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeLayout(again, pid, nil); err != nil {
			t.Fatalf("accepted, then refused after a round trip: %v", err)
		}
	})
}

// FuzzLiveLayoutSameVMAs: a later layout that leaves areas out
// (handoff.LiveLayout.SameVMAs) is decoded against those of the layout
// before, whatever its bytes: never a panic, and one accepted has every
// process's areas filled in, as the layout before listed them but for
// their page counts, and passes the checks again once they are listed.
func FuzzLiveLayoutSameVMAs(f *testing.F) {
	p := selfProcess(f)
	prev := handoff.AreasOf([]*core.Process{&p})
	same := handoff.SameVMAs{PID: p.PID, Pages: make([]uint64, len(p.VMAs))}
	q := p
	q.VMAs = nil
	b, _ := json.Marshal(handoff.LiveLayout{Process: q, SameVMAs: []handoff.SameVMAs{same}})
	f.Add(b)
	b, _ = json.Marshal(handoff.LiveLayout{Process: q, SameVMAs: []handoff.SameVMAs{same, same}})
	f.Add(b)
	b, _ = json.Marshal(handoff.LiveLayout{Process: p, SameVMAs: []handoff.SameVMAs{same}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, body []byte) {
		ll, err := decodeLayout(body, p.PID, prev)
		if err != nil {
			return
		}
		if ll.SameVMAs != nil {
			t.Fatal("areas left out once filled in")
		}
		var raw struct {
			Same []handoff.SameVMAs `json:"same_vmas"`
		}
		json.Unmarshal(body, &raw)
		for _, s := range raw.Same {
			if s.PID == ll.Process.PID && len(ll.Process.VMAs) != len(prev[s.PID]) {
				t.Fatalf("process %d: %d areas filled in, the layout before had %d", s.PID, len(ll.Process.VMAs), len(prev[s.PID]))
			}
		}
		again, err := json.Marshal(ll)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeLayout(again, p.PID, nil); err != nil {
			t.Fatalf("accepted, then refused with its areas listed: %v", err)
		}
	})
}

// FuzzLiveStateSameVMAs: a State that leaves areas out is decoded against
// the last layout's, whatever its bytes: never a panic, and one accepted
// has its areas filled in and passes the checks again once they are
// listed.
func FuzzLiveStateSameVMAs(f *testing.F) {
	p := selfProcess(f)
	prev := handoff.AreasOf([]*core.Process{&p})
	st := selfState(f, p, []byte("queued"))
	st.Image.Process.VMAs = nil
	st.SameVMAs = []handoff.SameVMAs{{PID: p.PID, Pages: make([]uint64, len(p.VMAs))}}
	b, _ := json.Marshal(st)
	f.Add(b)
	st.SameVMAs = append(st.SameVMAs, st.SameVMAs[0])
	b, _ = json.Marshal(st)
	f.Add(b)
	f.Fuzz(func(t *testing.T, body []byte) {
		ls, err := decodeState(body, p.PID, prev)
		if err != nil {
			return
		}
		if ls.SameVMAs != nil {
			t.Fatal("areas left out once filled in")
		}
		again, err := json.Marshal(ls)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeState(again, p.PID, nil); err != nil {
			t.Fatalf("accepted, then refused with its areas listed: %v", err)
		}
	})
}

// TestLiveStateSameVMAs: the State's areas left out are those of the last
// layout, with the State's page counts; without that layout they are
// refused.
func TestLiveStateSameVMAs(t *testing.T) {
	p := selfProcess(t)
	prev := handoff.AreasOf([]*core.Process{&p})
	st := selfState(t, p, []byte("q"))
	st.Image.Process.VMAs = nil
	pages := make([]uint64, len(p.VMAs))
	pages[0] = 1
	st.SameVMAs = []handoff.SameVMAs{{PID: p.PID, Pages: pages}}
	b, _ := json.Marshal(st)
	ls, err := decodeState(b, p.PID, prev)
	if err != nil {
		t.Fatal(err)
	}
	want := handoff.CloneVMAs(p.VMAs)
	want[0].Pages = 1
	if !reflect.DeepEqual(ls.Image.Process.VMAs, want) {
		t.Errorf("areas filled in: %+v, want %+v", ls.Image.Process.VMAs, want)
	}
	if _, err := decodeState(b, p.PID, nil); err == nil {
		t.Error("areas left out with no layout before accepted")
	}
}

// FuzzLiveState does the same for the State's body: the final image and
// its blobs.
func FuzzLiveState(f *testing.F) {
	p := selfProcess(f)
	b, _ := json.Marshal(selfState(f, p, []byte("queued")))
	f.Add(b, p.PID)
	st := selfState(f, p, []byte("queued"))
	for name := range st.Image.Blobs {
		st.Image.Mounts = &core.MountNS{Mounts: []core.Mount{{Kind: core.MountHost, ID: 1, Point: "/", Root: "/"},
			{Kind: core.MountTmpfs, ID: 2, Parent: 1, Point: "/t", Root: "/", FSType: "tmpfs",
				Files: []core.TmpfsFile{{Path: "d", Mode: 0o40755}, {Path: "d/f", Mode: 0o100644, Data: name}}}}}
	}
	b, _ = json.Marshal(st)
	f.Add(b, p.PID)
	f.Add([]byte(`{"image":{"kind":"migrate-image","version":1},"blobs":{"files/x":"eA=="}}`), 1)
	f.Fuzz(func(t *testing.T, body []byte, pid int) {
		ls, err := decodeState(body, pid, nil)
		if err != nil {
			return
		}
		refs := map[string]bool{}
		for _, pp := range ls.Image.Processes() {
			for _, b := range pp.Process.BlobNames() {
				refs[b] = true
			}
		}
		for _, b := range ls.Image.Mounts.BlobNames() {
			refs[b] = true
		}
		for name := range ls.Blobs {
			if !refs[name] || strings.Contains(name, "..") {
				t.Fatalf("blob %q accepted", name)
			}
		}
		again, err := json.Marshal(ls)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeState(again, pid, nil); err != nil {
			t.Fatalf("accepted, then refused after a round trip: %v", err)
		}
	})
}

// FuzzLaterLayoutMembers: a later round's layout of a tree that may
// change (three processes: the root, a child, a zombie) never panics,
// and one accepted changes nothing a tree cannot do: no process changed
// parent, no zombie runs again, and nothing was created (this target
// builds nothing, so a process joining is refused).
func FuzzLaterLayoutMembers(f *testing.F) {
	p := incomingProcess()
	kid := incomingProcess()
	kid.PID, kid.PPID, kid.Threads[0].TID = testPID+1, testPID, testPID+1
	kid.Pages = &core.PagesInfo{File: fmt.Sprintf("pages-%d.img", kid.PID)}
	zombie := core.Process{PID: testPID + 2, PPID: testPID, Zombie: &core.Zombie{}}
	for _, tree := range [][]core.Process{{kid, zombie}, {kid}, {zombie}, nil, {zombie, kid}} {
		b, _ := json.Marshal(handoff.LiveLayout{Process: p, Tree: tree, Members: true})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		lt := laterRound()
		lt.tree, lt.changes = true, true
		was := map[int]member{testPID: {ppid: 1}, kid.PID: {ppid: testPID}, zombie.PID: {ppid: testPID, zombie: true}}
		lt.members = maps.Clone(was)
		if err := lt.Layout(context.Background(), &transport.Layout{Round: 1, Body: body}); err != nil {
			return
		}
		for pid, m := range lt.members {
			if w, ok := was[pid]; !ok || w.ppid != m.ppid || (w.zombie && !m.zombie) {
				t.Fatalf("process %d accepted as %+v, was %+v (known: %v)", pid, m, w, ok)
			}
		}
		if len(lt.b.all) != 0 {
			t.Fatalf("%d processes built", len(lt.b.all))
		}
	})
}
