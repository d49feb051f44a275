package core

import "testing"

// TestValidateAttrs: values of the scheduling state and process
// attributes that the kernel would refuse, or take as something else,
// are refused by Validate.
func TestValidateAttrs(t *testing.T) {
	good := func() *Process {
		return &Process{
			PID: 10, Exe: FileRef{Path: "/bin/true"}, Cwd: "/", Root: "/",
			Attrs:   &ProcAttrs{OOMScoreAdj: 100, THPDisable: THPDisableExceptAdvised, Membarrier: 1<<4 | 1<<2},
			Threads: []Thread{{TID: 10, Sched: &Sched{Policy: SchedRR, Priority: 5, Nice: -3, Affinity: []uint64{2}, PdeathSignal: 9, IOPrio: 1<<13 | 4}}},
		}
	}
	if err := validateState(good()); err != nil {
		t.Fatalf("a valid process refused: %v", err)
	}
	for name, edit := range map[string]func(p *Process){
		"oom_score_adj 1001":         func(p *Process) { p.Attrs.OOMScoreAdj = 1001 },
		"oom_score_adj -1001":        func(p *Process) { p.Attrs.OOMScoreAdj = -1001 },
		"THP disable 2":              func(p *Process) { p.Attrs.THPDisable = 2 },
		"membarrier unknown":         func(p *Process) { p.Attrs.Membarrier = 1 << 9 },
		"MDWE no-inherit alone":      func(p *Process) { p.Attrs.MDWE = 2 },
		"MDWE unknown flag":          func(p *Process) { p.Attrs.MDWE = 5 },
		"SCHED_DEADLINE":             func(p *Process) { p.Threads[0].Sched.Policy = 6 },
		"RR priority 0":              func(p *Process) { p.Threads[0].Sched.Priority = 0 },
		"RR priority 100":            func(p *Process) { p.Threads[0].Sched.Priority = 100 },
		"RR with timer slack":        func(p *Process) { p.Threads[0].Sched.TimerSlackNS = 50000 },
		"OTHER with priority":        func(p *Process) { *p.Threads[0].Sched = Sched{Priority: 1, Affinity: []uint64{1}, TimerSlackNS: 1} },
		"OTHER without timer slack":  func(p *Process) { *p.Threads[0].Sched = Sched{Affinity: []uint64{1}} },
		"nice 20":                    func(p *Process) { p.Threads[0].Sched.Nice = 20 },
		"nice -21":                   func(p *Process) { p.Threads[0].Sched.Nice = -21 },
		"empty affinity":             func(p *Process) { p.Threads[0].Sched.Affinity = []uint64{0, 0} },
		"no affinity":                func(p *Process) { p.Threads[0].Sched.Affinity = nil },
		"affinity beyond 1024 CPUs":  func(p *Process) { p.Threads[0].Sched.Affinity = make([]uint64, MaxCPUs/64+1) },
		"parent-death signal 65":     func(p *Process) { p.Threads[0].Sched.PdeathSignal = 65 },
		"negative parent-death sig.": func(p *Process) { p.Threads[0].Sched.PdeathSignal = -1 },
		"I/O priority class 0":       func(p *Process) { p.Threads[0].Sched.IOPrio = 4 },
		"I/O priority class 4":       func(p *Process) { p.Threads[0].Sched.IOPrio = 4 << 13 },
		"negative I/O priority":      func(p *Process) { p.Threads[0].Sched.IOPrio = -1 },
	} {
		p := good()
		edit(p)
		if err := validateState(p); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// TestValidateCgroups: cgroup places the restore would write a PID into
// are refused unless the path is absolute and clean and the hierarchy
// named as the kernel names them, once.
func TestValidateCgroups(t *testing.T) {
	good := []Cgroup{{Path: "/a/b"}, {Controllers: "cpu,cpuacct", Path: "/"}, {Controllers: "name=systemd", Path: "/x y"}}
	if err := validateCgroups(good); err != nil {
		t.Fatalf("valid cgroups refused: %v", err)
	}
	for name, cgs := range map[string][]Cgroup{
		"relative path":  {{Path: "a/b"}},
		"dot-dot":        {{Path: "/a/../../etc"}},
		"NUL":            {{Path: "/a\x00b"}},
		"slash in ctl":   {{Controllers: "cpu/../x", Path: "/"}},
		"twice":          {{Path: "/a"}, {Path: "/b"}},
		"too many":       make([]Cgroup, MaxCgroupHierarchies+1),
		"trailing slash": {{Path: "/a/"}},
		"upper-case ctl": {{Controllers: "CPU", Path: "/"}},
		"empty path":     {{Controllers: "pids"}},
	} {
		if err := validateCgroups(cgs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := &Process{PID: 10, Exe: FileRef{Path: "/bin/true"}, Cwd: "/", Root: "/", Threads: []Thread{{TID: 10, Cgroups: []Cgroup{{Path: "rel"}}}}}
	if err := validateState(p); err == nil {
		t.Error("a thread's bad cgroup path accepted")
	}
}

// TestValidateLocks: file locks a restore would take are refused unless
// of a known kind, on a file, with a range fcntl takes.
func TestValidateLocks(t *testing.T) {
	good := FD{FD: 3, Kind: FDFile, File: &FileRef{Path: "/f"}, Locks: []FileLock{{Kind: LockPOSIX, Write: true, Start: 10, Len: 10}, {Kind: LockFlock}, {Kind: LockOFD, Start: 5}}}
	if err := validateLocks(&good); err != nil {
		t.Fatalf("valid locks refused: %v", err)
	}
	for name, edit := range map[string]func(f *FD){
		"unknown kind":     func(f *FD) { f.Locks[0].Kind = "lease" },
		"negative start":   func(f *FD) { f.Locks[0].Start = -1 },
		"negative length":  func(f *FD) { f.Locks[0].Len = -1 },
		"overflowing end":  func(f *FD) { f.Locks[0].Start, f.Locks[0].Len = 1<<62, 1<<62 },
		"flock with range": func(f *FD) { f.Locks[1].Start = 3 },
		"on a pipe":        func(f *FD) { f.Kind = FDPipe },
		"too many":         func(f *FD) { f.Locks = make([]FileLock, MaxLocksPerFD+1) },
	} {
		f := good
		f.Locks = append([]FileLock(nil), good.Locks...)
		edit(&f)
		if err := validateLocks(&f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
