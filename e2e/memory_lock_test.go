package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// memoryLocks returns, per area of pid, its "lo" and "lf" VmFlags (locked,
// locked on fault), and VmLck.
func memoryLocks(t *testing.T, pid int) (map[string]string, uint64) {
	t.Helper()
	maps, err := proc.ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range maps {
		var l []string
		for _, f := range []string{"lo", "lf"} {
			if m.HasFlag(f) {
				l = append(l, f)
			}
		}
		out[fmt.Sprintf("%x-%x %s", m.Start, m.End, m.Path)] = strings.Join(l, " ")
	}
	st, err := proc.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return out, st.VmLck
}

// TestMemoryLocks: memory locked with mlock, mlock2(MLOCK_ONFAULT) and
// mlockall(MCL_CURRENT|MCL_FUTURE[|MCL_ONFAULT]) is locked the same way
// after restore, area by area (guard pages of PROT_NONE included), with the
// same VmLck, and an area the process maps after restore is locked as
// MCL_FUTURE (and MCL_ONFAULT) say.
func TestMemoryLocks(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "mlock")
	for _, tc := range []struct {
		mode    string
		future  int
		newLock string
	}{
		{"areas", 0, ""},
		{"all", core.MclFuture, "lo"},
		{"onfault", core.MclFuture | core.MclOnfault, "lo lf"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			trigger := filepath.Join(t.TempDir(), "map")
			p := testutil.Start(t, bin, tc.mode, trigger)
			ready, _ := p.WaitLine(t, short, 0, "ready")
			p.WaitTick(t, short, 2)
			before, lck := memoryLocks(t, p.PID)
			if lck == 0 {
				t.Fatalf("the workload has no locked memory: %v", before)
			}
			dir, img := dumpKill(t, p, "")
			if img.Process.MlockAll != tc.future {
				t.Errorf("image: mlockall flags %#x, want %#x", img.Process.MlockAll, tc.future)
			}
			r := restoreOK(t, dir, p.Log)
			after, lck2 := memoryLocks(t, r.PID)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("area %s: locks %q before the dump, %q after restore", k, v, after[k])
				}
			}
			if lck2 != lck {
				t.Errorf("VmLck: %d before the dump, %d after restore", lck, lck2)
			}
			if tc.mode == "areas" {
				for k, want := range map[string]string{"a": "lo", "b": "lo lf", "c": ""} {
					addr, err := strconv.ParseUint(field(t, ready, k), 16, 64)
					if err != nil {
						t.Fatal(err)
					}
					if got := lockFlags(smapsFlags(t, r.PID, addr)); got != want {
						t.Errorf("area %s at %#x: locks %q, want %q", k, addr, got, want)
					}
				}
				return
			}
			n := len(r.Lines(t))
			if err := os.WriteFile(trigger, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			line, _ := r.WaitLine(t, short, n, "new")
			addr, err := strconv.ParseUint(field(t, line, "addr"), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			// (The kernel may merge the new area with a neighbour of
			// the same flags: look the flags up by address.)
			if got := lockFlags(flagsAt(t, r.PID, addr)); got != tc.newLock {
				t.Errorf("area mapped after restore: locks %q, want %q (MCL_FUTURE lost?)", got, tc.newLock)
			}
		})
	}
}

// lockFlags keeps the "lo" and "lf" of VmFlags.
func lockFlags(vmflags string) string {
	var l []string
	for _, f := range strings.Fields(vmflags) {
		if f == "lo" || f == "lf" {
			l = append(l, f)
		}
	}
	return strings.Join(l, " ")
}

// flagsAt returns the VmFlags of the area of pid holding addr.
func flagsAt(t *testing.T, pid int, addr uint64) string {
	t.Helper()
	maps, err := proc.ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Start <= addr && addr < m.End {
			return strings.Join(m.VmFlags, " ")
		}
	}
	t.Fatalf("no area holds %#x in process %d", addr, pid)
	return ""
}

// TestMappedMemfdSeals: memfds the process maps but holds no fd of keep
// their name and their seals (F_SEAL_SHRINK|GROW|SEAL on a shared mapping,
// F_SEAL_WRITE|SEAL on a private one; none on a memfd made without
// MFD_ALLOW_SEALING, which reports F_SEAL_SEAL; F_SEAL_EXEC and mode 0666
// on one made with MFD_NOEXEC_SEAL), their mode and their contents.
func TestMappedMemfdSeals(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "memfdmap"))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 2)
	type area struct {
		path  string
		seals int
		mode  uint32
		first byte
	}
	read := func(pid int) map[string]area {
		out := map[string]area{}
		maps, err := proc.ReadMaps(pid)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"a", "b", "c", "d"} {
			addr, err := strconv.ParseUint(field(t, ready, k), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range maps {
				if m.Start != addr {
					continue
				}
				f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
				if err != nil {
					t.Fatal(err)
				}
				seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
				var st unix.Stat_t
				if err := unix.Fstat(int(f.Fd()), &st); err != nil {
					t.Fatal(err)
				}
				f.Close()
				if err != nil {
					t.Fatalf("area %s: F_GET_SEALS: %v", k, err)
				}
				mem, err := os.ReadFile(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
				if err != nil || len(mem) == 0 {
					t.Fatalf("area %s: read: %v", k, err)
				}
				out[k] = area{m.Path, seals, st.Mode & 0o7777, mem[0]}
			}
		}
		return out
	}
	before := read(p.PID)
	if len(before) != 4 || before["a"].seals != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL || before["d"].mode&0o111 != 0 {
		t.Fatalf("the workload's memfds: %+v", before)
	}
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	after := read(r.PID)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("mapped memfds (path, seals, mode, first byte of the file):\n before the dump %+v\n after restore   %+v", before, after)
	}
	r.WaitTick(t, short, r.LastTick(t)+2)
}

// TestMayWrite: a shared file mapping keeps what mprotect may later make of
// it: read-only now, but writable later if its file was opened for writing
// (VM_MAYWRITE), and never if it was opened read-only (a file, a memfd
// reopened read-only).
func TestMayWrite(t *testing.T) {
	testutil.RequireRoot(t)
	files := t.TempDir()
	trigger := filepath.Join(t.TempDir(), "mprotect")
	p := testutil.Start(t, testutil.Build(t, "mayprot"), files, trigger)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 2)
	flags := func(pid int) map[string]string {
		out := map[string]string{}
		for _, k := range []string{"rw", "ro", "mro"} {
			addr, err := strconv.ParseUint(field(t, ready, k), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = smapsFlags(t, pid, addr)
		}
		return out
	}
	before := flags(p.PID)
	if !strings.Contains(before["rw"], "mw") || strings.Contains(before["ro"], "mw") || strings.Contains(before["mro"], "mw") {
		t.Fatalf("the workload's mappings: %v", before)
	}
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if after := flags(r.PID); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("VmFlags:\n before the dump %v\n after restore   %v", before, after)
	}
	n := len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := r.WaitLine(t, short, n, "mprotect")
	if want := fmt.Sprintf("mprotect rw=0 ro=%d mro=%d", unix.EACCES, unix.EACCES); got != want {
		t.Errorf("mprotect to read-write after restore: %q, want %q", got, want)
	}
	testutil.WaitFor(t, short, "the write through the shared mapping to reach the file", func() bool {
		b, err := os.ReadFile(filepath.Join(files, "rw"))
		return err == nil && len(b) > 0 && b[0] == 'X'
	})
}

// TestGrowsDown: an area mapped MAP_GROWSDOWN is restored growing down: a
// write just below it after restore grows it instead of killing the process.
func TestGrowsDown(t *testing.T) {
	testutil.RequireRoot(t)
	trigger := filepath.Join(t.TempDir(), "grow")
	p := testutil.Start(t, testutil.Build(t, "growsdown"), trigger)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	addr, err := strconv.ParseUint(field(t, ready, "addr"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 2)
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if f := smapsFlags(t, r.PID, addr); !strings.Contains(" "+f+" ", " gd ") {
		t.Errorf("area %#x after restore: VmFlags %q, no gd", addr, f)
	}
	n := len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.WaitLine(t, short, n, "grew")
	if f := flagsAt(t, r.PID, addr-4096); !strings.Contains(" "+f+" ", " gd ") {
		t.Errorf("the page below %#x after the write: VmFlags %q, want the grown area", addr, f)
	}
	checkRunningUntraced(t, r.PID)
}

// TestRefusedMemory: a process with memory a restore cannot give back as it
// was (hugetlb memory, which would come back as normal pages) is refused
// before it is frozen, with an *UnsupportedMappingError naming the area,
// and runs on untouched. And one with System V shared memory, moved live
// to a target in its own IPC namespace (where the segment's ID is taken:
// by itself), is refused by the target at the first layout, with the code
// sysv-shm, before it is frozen, and runs on untouched.
func TestRefusedMemory(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "refusedmem")
	for _, mode := range []string{"sysv", "hugetlb"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "hugetlb" {
				ensureHugePage(t)
			}
			p := testutil.Start(t, bin, mode)
			ready, _ := p.WaitLine(t, short, 0, "ready")
			addr, err := strconv.ParseUint(field(t, ready, "addr"), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			logger := slog.New(slog.NewTextHandler(&log, nil))
			if mode == "sysv" {
				_, err = source.Migrate(context.Background(), source.MigrateOptions{PID: p.PID, To: startServe(t),
					Transport: transport.Config{Insecure: true}, Logger: logger})
			} else {
				_, err = source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: logger})
			}
			if mode == "sysv" {
				var pe *handoff.PeerError
				if !errors.As(err, &pe) || !pe.Abort || pe.Code != "sysv-shm" {
					t.Fatalf("migrate: %v (%T), want the target's abort with the code sysv-shm", err, err)
				}
			} else {
				var ue *source.UnsupportedMappingError
				if !errors.As(err, &ue) || ue.PID != p.PID || ue.Start != addr {
					t.Fatalf("dump: %v (%T), want an UnsupportedMappingError for the area at %#x", err, err, addr)
				}
			}
			if strings.Contains(log.String(), "msg=frozen") {
				t.Errorf("refused after the freeze, not before:\n%s", log.String())
			}
			checkRunningUntraced(t, p.PID)
			p.WaitTick(t, short, p.LastTick(t)+3)
		})
	}
}

// ensureHugePage makes one 2 MiB huge page available for MAP_HUGETLB, by
// allowing one surplus page for the test's duration, or skips.
func ensureHugePage(t *testing.T) {
	t.Helper()
	st, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "HugePages_Free:"); ok && strings.TrimSpace(v) != "0" {
			return
		}
	}
	const knob = "/proc/sys/vm/nr_overcommit_hugepages"
	old, err := os.ReadFile(knob)
	if err != nil {
		testutil.Unavailable(t, "hugetlb pages (%s: %v)", knob, err)
	}
	if strings.TrimSpace(string(old)) != "0" {
		return
	}
	if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
		testutil.Unavailable(t, "hugetlb pages (cannot allow a surplus page: %v)", err)
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0o644) })
}

// TestNoReserve: an area mapped MAP_NORESERVE keeps it (VmFlags nr): a
// read-write area twice the size of RAM and swap, more than the heuristic
// overcommit lets a mapping without it have, is restored and still runs.
func TestNoReserve(t *testing.T) {
	testutil.RequireRoot(t)
	if b, err := os.ReadFile("/proc/sys/vm/overcommit_memory"); err != nil || strings.TrimSpace(string(b)) != "0" {
		testutil.Unavailable(t, "heuristic overcommit (vm.overcommit_memory 0): %q %v", b, err)
	}
	p := testutil.Start(t, testutil.Build(t, "growsdown"), filepath.Join(t.TempDir(), "never"))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	addr, err := strconv.ParseUint(field(t, ready, "nr"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 2)
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if f := smapsFlags(t, r.PID, addr); !strings.Contains(" "+f+" ", " nr ") {
		t.Errorf("area %#x after restore: VmFlags %q, no nr", addr, f)
	}
	r.WaitTick(t, short, r.LastTick(t)+2)
}

// TestMemoryAttributes: the transparent huge page switch (PR_SET_THP_DISABLE,
// with PR_THP_DISABLE_EXCEPT_ADVISED or not) and oom_score_adj come back as
// they were, not as the restoring process has them (the test process sets
// its own to other values for the restore: the husk inherits them).
// Lowering oom_score_adj below the restoring process's takes
// CAP_SYS_RESOURCE, which the restore has as root outside containers.
func TestMemoryAttributes(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "memattrs")
	view := func(pid int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
		if err != nil {
			t.Fatal(err)
		}
		return "thp_enabled=" + testutil.StatusField(t, pid, "THP_enabled") + " oom_score_adj=" + strings.TrimSpace(string(b))
	}
	// (Raised values only: lowering one takes CAP_SYS_RESOURCE, which a
	// test container may not give.)
	for _, tc := range []struct{ thp, oom string }{{"3", "345"}, {"1", "1000"}, {"0", "0"}} {
		t.Run(tc.thp+"/"+tc.oom, func(t *testing.T) {
			p := testutil.Start(t, bin, tc.thp, tc.oom)
			ready, _ := p.WaitLine(t, short, 0, "ready")
			if got := field(t, ready, "thp"); got != tc.thp {
				t.Fatalf("PR_GET_THP_DISABLE %s, want %s", got, tc.thp)
			}
			p.WaitTick(t, short, 2)
			before := view(p.PID)
			dir, img := dumpKill(t, p, "")
			if a := img.Process.Attrs; a == nil || strconv.Itoa(a.THPDisable) != tc.thp {
				t.Errorf("image: attributes %+v, want THP disable %s", a, tc.thp)
			}
			r := func() *testutil.Proc {
				defer restoreOwnAttributes(t, "1", "500")()
				return restoreOK(t, dir, p.Log)
			}()
			if after := view(r.PID); after != before {
				t.Errorf("before the dump %s, after restore %s", before, after)
			}
			r.WaitTick(t, short, r.LastTick(t)+2)
		})
	}
}

// restoreOwnAttributes gives the test process the THP switch thp and the
// oom_score_adj oom until the function it returns puts back its own.
func restoreOwnAttributes(t *testing.T, thp, oom string) func() {
	t.Helper()
	const adj = "/proc/self/oom_score_adj"
	old, err := os.ReadFile(adj)
	if err != nil {
		t.Fatal(err)
	}
	oldTHP, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := strconv.Atoi(thp)
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, uintptr(v&1), uintptr(v&^1), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(adj, []byte(oom), 0); err != nil {
		t.Fatal(err)
	}
	return func() {
		unix.Prctl(unix.PR_SET_THP_DISABLE, uintptr(oldTHP&1), uintptr(oldTHP&^1), 0, 0)
		os.WriteFile(adj, old, 0)
	}
}
