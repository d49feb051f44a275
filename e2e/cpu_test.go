package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// An image whose process used XSAVE state this CPU lacks (forged: a
// component bit this CPU does not enable, in the threads' recorded
// features) is refused before anything is created, with the kind "cpu"
// and the feature named.
func TestCPUFeatureRefused(t *testing.T) {
	testutil.RequireRoot(t)
	xcr0, ok := raw.XCR0()
	if !ok {
		testutil.Unavailable(t, "XSAVE (no OSXSAVE): the CPU features are not recorded")
	}
	var lacking uint64
	var name string
	for _, c := range []struct {
		bits uint64
		name string
	}{{1 << 19, "APX"}, {1<<17 | 1<<18, "AMX"}, {1<<5 | 1<<6 | 1<<7, "AVX-512"}, {1 << 2, "AVX"}} {
		if xcr0&c.bits == 0 {
			lacking, name = c.bits, c.name
			break
		}
	}
	if lacking == 0 {
		testutil.Unavailable(t, "a CPU that lacks one of APX, AMX, AVX-512, AVX (this one has XCR0 %#x)", xcr0)
	}
	p := testutil.Start(t, testutil.Build(t, "counter"))
	p.WaitTick(t, short, 2)
	dir, img := dumpKill(t, p, "")
	if img.CPU == nil || img.CPU.XCR0 != xcr0 || img.CPU.InUse&^xcr0 != 0 || img.CPU.InUse == 0 {
		t.Fatalf("image CPU features %+v, this CPU's XCR0 %#x", img.CPU, xcr0)
	}
	forgeImage(t, dir, func(m map[string]any) {
		m["cpu"].(map[string]any)["in_use"] = img.CPU.InUse | lacking
	})
	kids := testutil.Children()
	_, err := migrate.Restore(context.Background(), dir, migrate.RestoreOptions{Logger: testLogger(t)})
	var re *migrate.RefusedError
	var ce *target.CPUFeatureError
	if !errors.As(err, &re) || re.Kind != migrate.RefusedCPU || !errors.As(err, &ce) || !ce.InUse || ce.Missing != name {
		t.Fatalf("restore of a process that used %s state: %v, want a refusal of kind %q naming %s in use", name, err, migrate.RefusedCPU, name)
	}
	t.Logf("refused: %v", err)
	requireNothingLeft(t, img.Process.PID, kids)
}

// A live migration to a service whose CPU lacks XSAVE features of the
// source's (the service told so with --xsave-features) is refused at the
// first layout, before the source freezes anything: the original runs on
// untouched.
func TestLiveCPUFeatureRefused(t *testing.T) {
	testutil.RequireRoot(t)
	xcr0, ok := raw.XCR0()
	if !ok || xcr0 == 3 {
		testutil.Unavailable(t, "a CPU with XSAVE features beyond x87 and SSE (XCR0 %#x)", xcr0)
	}
	s := startServeWith(t, serveOptions{XSAVE: 3}) // x87 and SSE only
	w := startDirtyWork(t)
	_, err := source.Migrate(context.Background(), source.MigrateOptions{PID: w.PID, To: s.Addr,
		Transport: transport.Config{Insecure: true}, Policy: faultPolicy, Logger: testLogger(t)})
	checkHandoffError(t, err, handoff.PhasePreCopy) // before the freeze
	var pe *handoff.PeerError
	if !errors.As(err, &pe) || !pe.Abort {
		t.Fatalf("migration error %v does not carry the target's refusal", err)
	}
	t.Logf("refused: %v", err)
	checkRunningUntraced(t, w.PID)
	if d := w.before.Diff(testutil.Take(t, w.PID), 1, 2); d != "" {
		t.Errorf("the original changed across the refused migration:\n%s", d)
	}
	w.WaitTick(t, short, w.LastTick(t)+3)
	verifyDirty(t, w.Proc)
	if got := nsProcs(t, s); len(got) != 0 {
		t.Errorf("processes in the service's namespace after the refusal: %v, want none", got)
	}
}

// An image from a CPU with a smaller XSAVE area than this one's (forged:
// the threads' register sets cut to x87, SSE and AVX, as a CPU without
// AVX-512 gives them) is restored here: the kernel takes only this CPU's
// size, which the restore makes it, the components the source lacked in
// their initial state.
func TestXstateFromSmallerCPU(t *testing.T) {
	testutil.RequireRoot(t)
	xcr0, ok := raw.XCR0()
	const avxArea = 576 + 256 // legacy area and header, AVX's upper halves
	if !ok || xcr0&^7 == 0 || xcr0&4 == 0 {
		testutil.Unavailable(t, "a CPU with AVX and XSAVE features beyond it (XCR0 %#x)", xcr0)
	}
	p := testutil.Start(t, testutil.Build(t, "clocks"))
	p.WaitTick(t, short, 2)
	dir, img := dumpKill(t, p, "")
	forgeImage(t, dir, func(m map[string]any) {
		m["cpu"] = map[string]any{"xcr0": 7, "in_use": img.CPU.InUse & 7}
		for _, th := range m["process"].(map[string]any)["threads"].([]any) {
			x, err := base64.StdEncoding.DecodeString(th.(map[string]any)["xstate"].(string))
			if err != nil || len(x) < avxArea {
				t.Fatalf("thread xstate: %d bytes, %v", len(x), err)
			}
			x = x[:avxArea]
			x[512] &= 7 // xstate_bv: x87, SSE, AVX only
			for i := 513; i < 520; i++ {
				x[i] = 0
			}
			th.(map[string]any)["xstate"] = base64.StdEncoding.EncodeToString(x)
		}
	})
	r := restoreOK(t, dir, p.Log)
	defer r.Kill(t)
	r.WaitTick(t, long, r.LastTick(t)+3)
	checkClockTicks(t, r.Lines(t))
}
