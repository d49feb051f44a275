package target

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/transport"
)

const testPID = 4242

// incomingProcess is a process as a live source would describe it.
func incomingProcess() core.Process {
	return core.Process{
		PID: testPID, PPID: 1, Comm: "x",
		Exe: core.FileRef{Path: "/bin/true"}, Cwd: "/tmp", Root: "/",
		Threads:    []core.Thread{{TID: testPID}},
		Sigactions: make([]core.Sigaction, 64),
		VMAs:       []core.VMA{{Start: 0x10000, End: 0x20000, Flags: 2, Kind: core.VMAAnon}},
		FDs:        []core.FD{{FD: 0, Kind: core.FDFile, File: &core.FileRef{Path: "/dev/null"}}},
	}
}

// laterRound is a live target past its first layout: the builder exists
// (empty: a check that fails must come before any use of it).
func laterRound() *liveTarget {
	t := newLiveTarget(nil, slog.New(slog.DiscardHandler))
	t.pid = testPID
	t.members = map[int]member{testPID: {ppid: 1}}
	t.b = &Builder{}
	return t
}

func layoutMsg(t *testing.T, round uint32, p core.Process) *transport.Layout {
	t.Helper()
	b, err := json.Marshal(handoff.LiveLayout{Process: p})
	if err != nil {
		t.Fatal(err)
	}
	return &transport.Layout{Round: round, Body: b}
}

func stateMsg(t *testing.T, ls handoff.LiveState) *transport.State {
	t.Helper()
	b, err := json.Marshal(ls)
	if err != nil {
		t.Fatal(err)
	}
	return &transport.State{Body: b}
}

// TestLayoutDecodeBounded: a 16 MiB layout of empty areas (1.28 GiB of heap
// and 7.5 s of CPU when decoded as it came) is refused before decoding.
func TestLayoutDecodeBounded(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(`{"process":{"pid":4242,"vmas":[{}`)
	for b.Len() < transport.MaxMsgPayload-64 {
		b.WriteString(`,{}`)
	}
	b.WriteString(`]}}`)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := laterRound().Layout(context.Background(), &transport.Layout{Round: 1, Body: b.Bytes()})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, core.ErrDecodeBudget) {
		t.Fatalf("got %v, want ErrDecodeBudget", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("refusing it allocated %d MiB", alloc>>20)
	}
}

// TestEveryLayoutChecked: a layout after the first is checked as the first
// is: paths absolute and clean, this host's limits.
func TestEveryLayoutChecked(t *testing.T) {
	p := incomingProcess()
	p.Cwd = "../../etc"
	if err := laterRound().Layout(context.Background(), layoutMsg(t, 1, p)); !errors.Is(err, core.ErrBadPath) {
		t.Errorf("relative cwd in round 1's layout: %v, want ErrBadPath", err)
	}
	p = incomingProcess()
	p.VMAs = append(p.VMAs, core.VMA{Start: 0x30000, End: 0x40000, Flags: 2, Kind: core.VMAFile, File: &core.FileRef{Path: "../../etc/shadow"}})
	if err := laterRound().Layout(context.Background(), layoutMsg(t, 2, p)); !errors.Is(err, core.ErrBadPath) {
		t.Errorf("relative mapped file in round 2's layout: %v, want ErrBadPath", err)
	}
	p = incomingProcess()
	p.PID = 1
	if err := laterRound().Layout(context.Background(), layoutMsg(t, 1, p)); err == nil {
		t.Errorf("layout of another process accepted")
	}

	// More areas than vm.max_map_count allows a process here.
	lim := readKernelLimits()
	if lim.maxMapCount > 1<<20 {
		t.Skipf("vm.max_map_count is %d: too many areas to build", lim.maxMapCount)
	}
	p = incomingProcess()
	p.VMAs = make([]core.VMA, lim.maxMapCount+1)
	for i := range p.VMAs {
		a := uint64(0x10000 + i*0x2000)
		p.VMAs[i] = core.VMA{Start: a, End: a + 0x1000, Flags: 2, Kind: core.VMAAnon}
	}
	var he *HostLimitError
	if err := laterRound().Layout(context.Background(), layoutMsg(t, 1, p)); !errors.As(err, &he) || he.What != "vm.max_map_count" {
		t.Errorf("%d areas: %v, want a *HostLimitError on vm.max_map_count", len(p.VMAs), err)
	}
}

// TestStateChecked: the final state is checked like a layout, and carries
// only the blobs its image refers to.
func TestStateChecked(t *testing.T) {
	img := func(p core.Process) core.Image {
		return core.Image{Kind: core.ImageKind, Version: core.ImageVersion, Arch: runtime.GOARCH,
			Pages: core.PagesInfo{File: core.PagesFile}, Process: p}
	}
	for name, ls := range map[string]handoff.LiveState{
		"relative exe": func() handoff.LiveState {
			p := incomingProcess()
			p.Exe.Path = "../../etc/shadow"
			return handoff.LiveState{Image: img(p)}
		}(),
		"relative fd file": func() handoff.LiveState {
			p := incomingProcess()
			p.FDs[0].File.Path = "etc/shadow"
			return handoff.LiveState{Image: img(p)}
		}(),
		"unix socket file": func() handoff.LiveState {
			p := incomingProcess()
			p.FDs = append(p.FDs, core.FD{FD: 1, Kind: core.FDSocket, Socket: &core.Socket{Family: 1, Name: []byte("s"), File: &core.SockFile{Path: "s"}}})
			return handoff.LiveState{Image: img(p)}
		}(),
	} {
		err := laterRound().Restore(context.Background(), stateMsg(t, ls))
		if !errors.Is(err, core.ErrBadPath) {
			t.Errorf("%s: %v, want ErrBadPath", name, err)
		}
	}
	// A blob nobody refers to (or named to escape the image's directory).
	for _, name := range []string{"files/extra", "../../etc/cron.d/x"} {
		ls := handoff.LiveState{Image: img(incomingProcess()), Blobs: map[string][]byte{name: []byte("x")}}
		if err := laterRound().Restore(context.Background(), stateMsg(t, ls)); err == nil {
			t.Errorf("blob %q accepted", name)
		}
	}
	// The state of another process.
	p := incomingProcess()
	p.PID, p.Threads[0].TID = 77, 77
	if err := laterRound().Restore(context.Background(), stateMsg(t, handoff.LiveState{Image: img(p)})); err == nil {
		t.Errorf("state of another process accepted")
	}
}

// TestLaterLayoutFiles: a file a later round's layout maps must be here,
// the same as the source's.
func TestLaterLayoutFiles(t *testing.T) {
	p := incomingProcess()
	p.VMAs = append(p.VMAs, core.VMA{Start: 0x30000, End: 0x40000, Flags: 2, Kind: core.VMAFile,
		File: &core.FileRef{Path: t.TempDir() + "/gone"}})
	err := laterRound().Layout(context.Background(), layoutMsg(t, 1, p))
	var ie *core.ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("a missing mapped file in round 1's layout: %v, want an *ImageError", err)
	}
}

// TestLaterLayoutTreeChanged: a later round's layout whose tree is not
// the first layout's (a process more, or a zombie more) is refused before
// anything is changed; the source gives up on such a tree itself.
func TestLaterLayoutTreeChanged(t *testing.T) {
	kid := incomingProcess()
	kid.PID, kid.PPID, kid.Threads[0].TID = testPID+1, testPID, testPID+1
	kid.Pages = &core.PagesInfo{File: fmt.Sprintf("pages-%d.img", kid.PID)}
	zombie := core.Process{PID: testPID + 2, PPID: testPID, Zombie: &core.Zombie{}}
	for name, tree := range map[string][]core.Process{
		"a child more":  {kid},
		"a zombie more": {zombie},
	} {
		b, err := json.Marshal(handoff.LiveLayout{Process: incomingProcess(), Tree: tree})
		if err != nil {
			t.Fatal(err)
		}
		err = laterRound().Layout(context.Background(), &transport.Layout{Round: 1, Body: b})
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

// TestLaterLayoutMembers: with a tree that may change (Members), a later
// layout may only say what a tree can do: a process that forked joins
// under a process being built, one that exited stays a zombie, none
// changes parent, the root stays, and no more than maxBuilt processes
// are ever created. Anything else is refused before anything is created.
func TestLaterLayoutMembers(t *testing.T) {
	proc := func(pid, ppid int) core.Process {
		p := incomingProcess()
		p.PID, p.PPID, p.Threads[0].TID = pid, ppid, pid
		p.Pages = &core.PagesInfo{File: fmt.Sprintf("pages-%d.img", pid)}
		return p
	}
	kid := proc(testPID+1, testPID)
	zombie := core.Process{PID: testPID + 2, PPID: testPID, Zombie: &core.Zombie{}}
	target := func() *liveTarget {
		lt := laterRound()
		lt.tree, lt.changes = true, true
		lt.members = map[int]member{testPID: {ppid: 1}, kid.PID: {ppid: testPID}, zombie.PID: {ppid: testPID, zombie: true}}
		return lt
	}
	newKid := proc(testPID+3, testPID)
	for name, c := range map[string]struct {
		tree  []core.Process
		built int
	}{
		"another parent":         {tree: []core.Process{newKid, proc(kid.PID, newKid.PID), zombie}},
		"a zombie running again": {tree: []core.Process{kid, proc(zombie.PID, testPID)}},
		"under no process built": {tree: []core.Process{kid, zombie, proc(testPID+3, kid.PID)}},
		"too many built":         {tree: []core.Process{kid, zombie, newKid}, built: maxBuilt},
	} {
		b, err := json.Marshal(handoff.LiveLayout{Process: incomingProcess(), Tree: c.tree, Members: true})
		if err != nil {
			t.Fatal(err)
		}
		lt := target()
		lt.b.built = c.built
		if err := lt.Layout(context.Background(), &transport.Layout{Round: 1, Body: b}); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
		if len(lt.b.all) != 0 || lt.b.built != c.built {
			t.Errorf("%s: %d processes built", name, lt.b.built-c.built)
		}
	}
}
