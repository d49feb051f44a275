package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/target"
)

// TestCheckFindsDifferences: target.Check, which every restore of these
// tests runs (restoreOK), finds no difference between a restored process
// and its image, and names each difference when the image is changed in
// one place.
func TestCheckFindsDifferences(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "sleeper"), "pause")
	p.WaitLine(t, short, 0, "sleeping")
	dir, img := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	r.WaitLine(t, short, 0, "sleeping")
	if diffs := target.Check(&img.Process, true); len(diffs) != 0 {
		t.Fatalf("a restored process differs from its image: %v", diffs)
	}
	clone := func() *core.Process {
		b, err := json.Marshal(&img.Process)
		if err != nil {
			t.Fatal(err)
		}
		var c core.Process
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	logFD := -1
	for _, f := range img.Process.FDs {
		if f.Kind == core.FDFile && f.FD == 1 {
			logFD = f.FD
		}
	}
	for what, edit := range map[string]func(p *core.Process){
		"umask":             func(p *core.Process) { p.Umask ^= 0o7 },
		"caught signals":    func(p *core.Process) { p.Sigactions[int(10-1)].Handler = 0 },
		"nice":              func(p *core.Process) { p.Threads[0].Sched.Nice++ },
		"credentials":       func(p *core.Process) { p.Creds.UID[0]++ },
		"blocked signals":   func(p *core.Process) { p.Threads[0].SigMask ^= 1 << 1 },
		"working directory": func(p *core.Process) { p.Cwd = "/nowhere" },
		"threads":           func(p *core.Process) { p.Threads = append(p.Threads, core.Thread{TID: 1}) },
		"rlimit":            func(p *core.Process) { p.Rlimits[0].Cur-- },
		"fd 1 offset":       func(p *core.Process) { p.FDs[idxFD(p, logFD)].Pos++ },
		"fd 1 locks":        func(p *core.Process) { p.FDs[idxFD(p, logFD)].Locks = []core.FileLock{{Kind: core.LockFlock}} },
		"fd 99":             func(p *core.Process) { p.FDs = append(p.FDs, core.FD{FD: 99, Kind: core.FDFile}) },
		"protection":        func(p *core.Process) { p.VMAs[0].Prot ^= 1 },
		"sharing":           func(p *core.Process) { p.VMAs[len(p.VMAs)/2].Flags ^= unix.MAP_SHARED },
		"file":              func(p *core.Process) { p.VMAs[fileArea(p)].File.Path = "/elsewhere" },
		"area 0x10000-0x11000": func(p *core.Process) {
			p.VMAs = append([]core.VMA{{Start: 0x10000, End: 0x11000, Prot: unix.PROT_READ, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon}}, p.VMAs...)
		},
		"cgroup v2":     func(p *core.Process) { p.Cgroups = []core.Cgroup{{Path: "/elsewhere"}} },
		"seccomp mode":  func(p *core.Process) { p.Threads[0].Seccomp = &core.Seccomp{Mode: core.SeccompModeStrict, Filter: -1} },
		"process group": func(p *core.Process) { p.PGID++ },
	} {
		if what == "fd 1 offset" || what == "fd 1 locks" {
			if logFD < 0 {
				t.Fatal("no fd 1 in the image")
			}
		}
		c := clone()
		edit(c)
		diffs := target.Check(c, true)
		found := false
		for _, d := range diffs {
			found = found || strings.Contains(d.What, what)
		}
		if !found {
			t.Errorf("changed %s: differences %v, none names it", what, diffs)
		}
	}
	// Signalled once it sleeps in pause(): it was dumped on its
	// "sleeping" line, maybe before the call, which it then makes only
	// after the restore; a SIGUSR1 handled before it would be lost.
	waitPaused(t, r.PID)
	r.Signal(t, 10)
	r.WaitLine(t, short, 0, "paused")
}

// fileArea is the index of the last area of p that maps a file.
func fileArea(p *core.Process) int {
	for i := len(p.VMAs) - 1; i >= 0; i-- {
		if v := p.VMAs[i]; v.File != nil && !v.File.Deleted && !strings.HasPrefix(v.File.Path, "/memfd:") {
			return i
		}
	}
	return 0
}

func idxFD(p *core.Process, fd int) int {
	for i, f := range p.FDs {
		if f.FD == fd {
			return i
		}
	}
	return 0
}
