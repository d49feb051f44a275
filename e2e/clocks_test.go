package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
	"golang.org/x/sys/unix"
)

// A process restored by a migrate whose clocks differ from the dumping
// host's (it runs in a time namespace 1000 s ahead in CLOCK_MONOTONIC and
// up to 1000 s behind in CLOCK_BOOTTIME, as on another host) keeps its clocks:
// it is put in a time namespace of its own, its monotonic and boot-time
// clocks go on with the real time that passed, its absolute sleeps and
// timerfd end when due. From another boot (the image's boot id forged)
// the offsets come from the realtime clocks, and it is the same. A
// restore by a migrate with the dump's clocks makes no namespace.
func TestClocksRestoreElsewhere(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux): %v", err)
	}
	mine, _ := os.Readlink("/proc/self/ns/time")
	for _, tc := range []struct {
		name       string
		restorerNS bool // the restorer in a time namespace of +1000 s, boot time set back (backBoottime)
		forgeBoot  bool
		ownNS      bool // the process in a time namespace of +500 s, +300 s
	}{
		{"same host", false, false, false},
		{"restorer in a time namespace", true, false, false},
		{"another boot", true, true, false},
		{"process in a time namespace", false, false, true},
		{"process and restorer in time namespaces", true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := testutil.Build(t, "clocks")
			var p *testutil.Proc
			wantOff := core.TimeOffsets{}
			if tc.ownNS {
				// unshare execs the workload in its namespace: the PID
				// is the workload's.
				p = testutil.Start(t, unshare, "--time", "--monotonic", "500", "--boottime", "300", bin)
				wantOff = core.TimeOffsets{Monotonic: 500e9, Boottime: 300e9}
			} else {
				p = testutil.Start(t, bin)
			}
			p.WaitLine(t, short, 0, "ready")
			p.WaitTick(t, short, 3)
			dir, img := dumpKill(t, p, "")
			if img.Clocks == nil || img.Clocks.Offsets != wantOff {
				t.Fatalf("image clocks %+v, want readings with offsets %v", img.Clocks, wantOff)
			}
			if tc.forgeBoot {
				forgeImage(t, dir, func(m map[string]any) { m["clocks"].(map[string]any)["boot_id"] = "another-boot" })
			}
			var r *testutil.Proc
			var rep *target.RestoreReport
			if !tc.restorerNS {
				r, rep = restoreWithReport(t, dir, p.Log)
			} else {
				cmd := exec.Command(unshare, "--time", "--monotonic", "1000", "--boottime", strconv.Itoa(-backBoottime(t)),
					buildMigrate(t), "restore", "--check", "--json", "--dir", dir)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("migrate restore in a time namespace: %v\n%s", err, stderr.Bytes())
				}
				r = testutil.Adopt(t, img.Process.PID, p.Log)
				if err := json.Unmarshal(out, &rep); err != nil {
					t.Fatalf("restore report %q: %v", out, err)
				}
			}
			defer r.Kill(t)
			// The report names the namespace made, if one was.
			if made := rep.TimeNamespace != nil; made != (tc.restorerNS || tc.ownNS) {
				t.Errorf("restore report's time namespace %v, want one only when the restorer's clocks differ from the process's", rep.TimeNamespace)
			} else if made && (absNS(rep.TimeNamespace.Monotonic-wantOff.Monotonic) > 2e6 || absNS(rep.TimeNamespace.Boottime-wantOff.Boottime) > 2e6) {
				t.Errorf("restore report's time namespace %v, want %v", *rep.TimeNamespace, wantOff)
			}
			ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", r.PID))
			if (tc.restorerNS || tc.ownNS) == (ns == mine) {
				t.Errorf("restored in time namespace %s, the test's is %s: want a namespace of its own only when the restorer's clocks differ from the process's", ns, mine)
			}
			if off, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", r.PID)); err != nil || !offsetsNear(string(off), wantOff) {
				t.Errorf("restored process's time offsets %q (%v), want %v: those it had where it was dumped", off, err, wantOff)
			}
			last := r.LastTick(t)
			r.WaitTick(t, long, last+4)
			checkClockTicks(t, r.Lines(t))
		})
	}
}

// backBoottime is how many seconds a time namespace may set
// CLOCK_BOOTTIME back, as a host booted later would show it: 1000, or half
// the time since this one booted if that is less (the kernel refuses an
// offset that would make the clock negative, ERANGE: a machine booted
// minutes ago, as CI's, cannot go 1000 s back).
func backBoottime(t *testing.T) int {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatalf("clock_gettime(CLOCK_BOOTTIME): %v", err)
	}
	back := min(1000, int(ts.Sec/2))
	if back < 1 {
		t.Fatalf("the boot-time clock reads %d s: too little to set back", ts.Sec)
	}
	return back
}

func absNS(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// zeroOffsets says a timens_offsets file shows no offset.
func zeroOffsets(s string) bool { return offsetsNear(s, core.TimeOffsets{}) }

// offsetsNear says a timens_offsets file shows the offsets want, within
// 2 ms (the forged boot id makes them from realtime).
func offsetsNear(s string, want core.TimeOffsets) bool {
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			return false
		}
		sec, _ := strconv.ParseInt(f[1], 10, 64)
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		w := want.Monotonic
		if f[0] == "boottime" {
			w = want.Boottime
		}
		if v := sec*1e9 + ns - w; v < -2e6 || v > 2e6 {
			return false
		}
	}
	return true
}

// checkClockTicks checks the clocks workload's ticks: from one to the
// next, CLOCK_MONOTONIC and CLOCK_BOOTTIME moved as CLOCK_REALTIME did,
// each round slept its 300 ms at least (the timerfd fired once), and no
// round took much longer than the real time it spanned.
func checkClockTicks(t *testing.T, lines []string) {
	t.Helper()
	type tick struct{ mono, boot, real, slept, fired int64 }
	var ticks []tick
	for _, l := range lines {
		if !strings.HasPrefix(l, "tick ") {
			continue
		}
		var n int
		var k tick
		if _, err := fmt.Sscanf(l, "tick %d mono=%d boot=%d real=%d slept=%d fired=%d", &n, &k.mono, &k.boot, &k.real, &k.slept, &k.fired); err != nil {
			t.Fatalf("tick line %q: %v", l, err)
		}
		ticks = append(ticks, k)
	}
	const slack = 250 // ms: the three clocks are read one after the other on a loaded host
	for i := 1; i < len(ticks); i++ {
		a, b := ticks[i-1], ticks[i]
		dr := b.real - a.real
		if d := (b.mono - a.mono) - dr; d > slack || d < -slack {
			t.Errorf("tick %d: CLOCK_MONOTONIC moved %d ms, CLOCK_REALTIME %d ms", i+1, b.mono-a.mono, dr)
		}
		if d := (b.boot - a.boot) - dr; d > slack || d < -slack {
			t.Errorf("tick %d: CLOCK_BOOTTIME moved %d ms, CLOCK_REALTIME %d ms", i+1, b.boot-a.boot, dr)
		}
		if b.slept < 299 || b.slept > dr+slack || b.fired != 1 {
			t.Errorf("tick %d: slept %d ms (want 300 ms, and at most the %d ms that passed), the timerfd fired %d times", i+1, b.slept, dr, b.fired)
		}
	}
}

// forgeImage edits the image's metadata (test-only: what no dump writes).
func forgeImage(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, core.MetaFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // 64-bit numbers whole
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A process migrated live to a service whose clocks differ (it runs in a
// time namespace +1000 s monotonic, boot time set back) keeps its clocks,
// sleeps and timerfd there: the service made it a time namespace at the
// first layout, from the clocks the layout carried.
func TestLiveClocks(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
	}
	s := startServeWith(t, serveOptions{Time: &[2]int{1000, -backBoottime(t)}})
	p := testutil.Start(t, testutil.Build(t, "clocks"))
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: s.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	p.WaitExit(t, short)
	inner := findInNamespace(t, p.PID)
	if off, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", inner)); err != nil || !zeroOffsets(string(off)) {
		t.Errorf("migrated process's time offsets %q (%v), want none: the clocks of the host it came from", off, err)
	}
	if off, err := os.ReadFile(fmt.Sprintf("/proc/%d/timens_offsets", s.PID)); err != nil || zeroOffsets(string(off)) {
		t.Errorf("the service's time offsets %q (%v), want +1000 s monotonic and boot time set back", off, err)
	}
	last := testutil.Ticks(testutil.LogLines(t, p.Log))
	testutil.WaitFor(t, long, "the migrated process to tick on", func() bool {
		return len(testutil.Ticks(testutil.LogLines(t, p.Log))) >= len(last)+4
	})
	checkClockTicks(t, testutil.LogLines(t, p.Log))
}
