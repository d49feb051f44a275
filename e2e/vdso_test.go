package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// A process restored through the vdso proxy (as on a kernel whose vdso
// differs; forced here, on one kernel) keeps reading the clocks through
// libc and through a pointer to __vdso_clock_gettime it took at start:
// this kernel's [vdso] is elsewhere, the old address holds the proxy
// (read-only, executable), the monotonic clock never goes back, the real
// time is the host's, and a signal handled after the restore returns (its
// frame and sigreturn do not go through the vdso). A process in a time
// namespace of its own gets one again, and this kernel's vdso in it
// serves the proxy.
func TestVDSOProxy(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("same clocks", func(t *testing.T) { testVDSOProxy(t) })
	t.Run("time namespace", func(t *testing.T) {
		if _, err := os.Stat("/proc/self/ns/time"); err != nil {
			testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
		}
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.Unavailable(t, "unshare (util-linux): %v", err)
		}
		testVDSOProxy(t, unshare, "--time", "--monotonic", "500", "--boottime", "300")
	})
}

// testVDSOProxy runs the vdso workload (under the command and arguments
// in, if any, which exec it), dumps it, restores it through the proxy and
// checks it.
func testVDSOProxy(t *testing.T, in ...string) {
	var p *testutil.Proc
	if bin := testutil.Build(t, "vdso"); len(in) > 0 {
		p = testutil.Start(t, in[0], append(in[1:], bin)...)
	} else {
		p = testutil.Start(t, bin)
	}
	ready, _ := p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	dir, img := dumpKill(t, p, "")
	old := imageVDSOArea(t, img)
	if got := field(t, ready, "vdso"); got != "0x"+strconv.FormatUint(old.Start, 16) {
		t.Fatalf("the process's AT_SYSINFO_EHDR is %s, the image's [vdso] at %#x", got, old.Start)
	}
	// The threads, which spend most of their time in the vdso, were
	// stepped out of it (they returned to their code, or are at a system
	// call).
	if len(img.Process.Threads) != 2 {
		t.Fatalf("%d threads dumped, want 2", len(img.Process.Threads))
	}
	for _, th := range img.Process.Threads {
		if rip := th.Regs.RIP; rip >= old.Start && rip < old.End && th.Restart == "" {
			t.Errorf("thread %d was dumped inside the vdso, at %#x", th.TID, rip)
		}
	}
	r, rep := restoreOptsReport(t, dir, p.Log, target.RestoreOptions{VDSOProxy: true})
	if !rep.VDSOProxy || (rep.TimeNamespace != nil) != (len(in) > 0) {
		t.Fatalf("restore report %+v: want a vdso proxy, a time namespace only for a process in one", rep)
	}
	checkProxyLayout(t, r.PID, old.Start, old.End)
	// Check takes the proxied layout (the restore checked it), and sees
	// a proxy that is not the image's vdso's. (The process runs: its
	// output's offset differs from the image's.)
	memory := func(ds []target.Difference) (out []target.Difference) {
		for _, d := range ds {
			if strings.HasPrefix(d.What, "area ") || strings.HasPrefix(d.What, "vdso") {
				out = append(out, d)
			}
		}
		return out
	}
	if d := memory(target.Check(&img.Process, true)); len(d) != 0 {
		t.Errorf("Check of the restored process: %v", d)
	}
	forged := img.Process
	forged.VMAs = slices.Clone(forged.VMAs)
	for i := range forged.VMAs {
		if v := &forged.VMAs[i]; v.Kind == core.VMAVDSO {
			v.Code = slices.Clone(v.Code)
			v.Code[7] ^= 0xff
		}
	}
	if d := memory(target.Check(&forged, true)); len(d) != 1 {
		t.Errorf("Check against an image whose vdso is another: %v, want one difference", d)
	}

	checkProxied(t, r)
	r.Kill(t)
}

// field64 is the integer value of key=value in a log line.
func field64(t *testing.T, line, key string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(field(t, line, key), 10, 64)
	if err != nil {
		t.Fatalf("%q: %s: %v", line, key, err)
	}
	return v
}

// TestLiveVDSOProxy: a live migration to a service that forces the vdso
// proxy builds the process with it from the first layout, and the
// pre-copy rounds lay its memory out around this kernel's vdso.
func TestLiveVDSOProxy(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "vdso"))
	ready, _ := p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	maps, err := proc.ReadMaps(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(maps, func(m proc.Mapping) bool { return m.Path == "[vdso]" })
	if i < 0 || field(t, ready, "vdso") != "0x"+strconv.FormatUint(maps[i].Start, 16) {
		t.Fatalf("the workload's vdso: %q, maps %v", ready, maps)
	}
	s := startServeWith(t, serveOptions{VDSOProxy: true})
	r, _ := migrateLive(t, p, s, source.MigrateOptions{})
	checkProxyLayout(t, r.PID, maps[i].Start, maps[i].End)
	checkProxied(t, r)
}

// checkProxyLayout checks that process pid has this kernel's [vdso]
// elsewhere than start-end, its old one's place, which holds an anonymous
// read-only, executable proxy.
func checkProxyLayout(t *testing.T, pid int, start, end uint64) {
	t.Helper()
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var vdso, proxy *proc.Mapping
	for i := range maps {
		switch m := &maps[i]; {
		case m.Path == "[vdso]":
			vdso = m
		case m.Start == start:
			proxy = m
		}
	}
	if vdso == nil || vdso.Start == start || proxy == nil || proxy.End != end ||
		proxy.Prot != unix.PROT_READ|unix.PROT_EXEC || proxy.Path != "" {
		t.Fatalf("after the restore [vdso] is %+v and %#x-%#x is %+v: want this kernel's vdso elsewhere, an anonymous r-x proxy at the old one", vdso, start, end, proxy)
	}
}

// checkProxied checks that the vdso workload r, restored through the
// proxy, goes on: its clocks right (monotonic never back, real time the
// host's, the readings of a round agreeing), a SIGUSR1 handled and
// returned from.
func checkProxied(t *testing.T, r *testutil.Proc) {
	t.Helper()
	n := r.LastTick(t)
	r.WaitTick(t, short, n+5)
	r.Signal(t, unix.SIGUSR1)
	_, at := r.WaitLine(t, short, 0, "tick")
	lines := r.Lines(t)
	for i := at; ; i++ {
		if i == len(lines) {
			testutil.WaitFor(t, short, "a tick after SIGUSR1", func() bool { lines = r.Lines(t); return i < len(lines) })
		}
		if field(t, lines[i], "sig") == "1" {
			at = i
			break
		}
	}
	// Ticks go on after the handler returned.
	r.WaitTick(t, short, r.LastTick(t)+3)
	now := time.Now().UnixMilli()
	lines = r.Lines(t)
	var prev int64
	ticks := 0
	for _, l := range lines {
		if len(l) < 5 || l[:5] != "tick " {
			continue
		}
		ticks++
		num := func(k string) int64 { return field64(t, l, k) }
		mono, real, tv, tm, ptr := num("mono"), num("real"), num("tv"), num("time"), num("ptr")
		if num("back") != 0 || mono < prev || ptr < mono {
			t.Errorf("the monotonic clock went back: %q after mono=%d", l, prev)
		}
		prev = mono
		// (time() reads the coarse clock, up to a tick behind.)
		if tv < real || tv-real > 1000 || tm < (real-50)/1000 || tm-real/1000 > 1 || ptr-mono > 1000 {
			t.Errorf("the readings of one round disagree: %q", l)
		}
		if real > now || now-real > 60000 {
			t.Errorf("real time %d ms, the host's is %d: %q", real, now, l)
		}
	}
	last := lines[len(lines)-1]
	if d := now - field64(t, last, "real"); d > 10000 {
		t.Errorf("last tick %q is %d ms behind the host's real time", last, d)
	}
	t.Logf("%d ticks, after SIGUSR1 %q, last %q", ticks, lines[at], last)
}

// TestVDSOOtherKernel: an image whose vdso is not this kernel's (forged:
// this kernel's with another build id, as another build of the same
// kernel) is restored through the proxy without being asked to; one whose
// vdso has a function this kernel's lacks (and that is no system call)
// is refused before anything is made, naming it.
func TestVDSOOtherKernel(t *testing.T) {
	testutil.RequireRoot(t)
	anotherBuild := func(code []byte) []byte {
		i := bytes.Index(code, []byte("GNU\x00"))
		if i < 0 {
			t.Fatal("no build id note in the vdso")
		}
		code[i+4] ^= 0xff
		return code
	}
	for _, tc := range []struct {
		name   string
		forge  func(code []byte) []byte
		refuse string // the function named in the refusal
	}{
		{"another build", anotherBuild, ""},
		{"a function missing here", func(code []byte) []byte {
			return bytes.ReplaceAll(code, []byte("__vdso_time\x00"), []byte("__vdso_tXme\x00"))
		}, "__vdso_tXme"},
		// (The thread's instruction pointer is moved into the vdso below.)
		{"a thread inside the vdso", anotherBuild, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testutil.Start(t, testutil.Build(t, "vdso"))
			p.WaitLine(t, short, 0, "ready")
			p.WaitTick(t, short, 3)
			dir, img := dumpKill(t, p, "")
			old := *imageVDSOArea(t, img)
			forgeImage(t, dir, func(m map[string]any) {
				for _, v := range m["process"].(map[string]any)["vmas"].([]any) {
					v := v.(map[string]any)
					if v["kind"] != core.VMAVDSO {
						continue
					}
					code := tc.forge(slices.Clone(old.Code))
					sum := sha256.Sum256(code)
					v["code"], v["hash"] = base64.StdEncoding.EncodeToString(code), hex.EncodeToString(sum[:])
				}
				if tc.name == "a thread inside the vdso" {
					// As a process stopped by job control inside time()
					// would be: not stepped out.
					th := m["process"].(map[string]any)["threads"].([]any)[0].(map[string]any)
					th["regs"].(map[string]any)["RIP"] = old.Start + 0x10
					delete(th, "restart")
				}
			})
			if tc.name == "a thread inside the vdso" {
				_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
				var ve *target.VDSOMismatchError
				if !errors.As(err, &ve) {
					t.Fatalf("restore: %v; want a refusal of kind vdso", err)
				}
				t.Logf("refused: %v", err)
				if _, err := testutil.State(img.Process.PID); err == nil {
					t.Fatalf("process %d exists after the refused restore", img.Process.PID)
				}
				return
			}
			if tc.refuse != "" {
				_, err := migrate.Restore(context.Background(), dir, migrate.RestoreOptions{Logger: testLogger(t)})
				var re *migrate.RefusedError
				var ve *target.VDSOMismatchError
				if !errors.As(err, &re) || re.Kind != migrate.RefusedVDSO || !errors.As(err, &ve) || !slices.Contains(ve.Missing, tc.refuse) {
					t.Fatalf("restore: %v; want a refusal of kind vdso naming %s", err, tc.refuse)
				}
				if _, err := testutil.State(img.Process.PID); err == nil {
					t.Fatalf("process %d exists after the refused restore", img.Process.PID)
				}
				return
			}
			r, rep := restoreWithReport(t, dir, p.Log)
			if !rep.VDSOProxy {
				t.Fatalf("restore report %+v: no vdso proxy for another vdso", rep)
			}
			checkProxyLayout(t, r.PID, old.Start, old.End)
			checkProxied(t, r)
			r.Kill(t)
		})
	}
}

// imageVDSOArea is the image's [vdso] area, with its code.
func imageVDSOArea(t *testing.T, img *core.Image) *core.VMA {
	t.Helper()
	for i := range img.Process.VMAs {
		if v := &img.Process.VMAs[i]; v.Kind == core.VMAVDSO && uint64(len(v.Code)) == v.Len() {
			return v
		}
	}
	t.Fatalf("the image has no [vdso] with its code")
	return nil
}
