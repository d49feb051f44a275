package source

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
)

// TestDumpTransfer: a dump of a process with 64 MiB of memory reports its
// progress while it copies, in one copy and in pre-copy rounds: pages
// growing within a round, the first round's planned size near the
// process's memory, and no report once Dump has returned.
func TestDumpTransfer(t *testing.T) {
	testutil.RequireRoot(t)
	old := transferEvery
	transferEvery = time.Millisecond
	t.Cleanup(func() { transferEvery = old })
	t.Run("frozen", func(t *testing.T) { testDumpTransfer(t, false) })
	t.Run("pre-copy", func(t *testing.T) { testDumpTransfer(t, true) })
}

func testDumpTransfer(t *testing.T, preCopy bool) {
	const mib = 64
	p := testutil.Start(t, testutil.Build(t, "dirty"), "64", "0", "600")
	p.WaitLine(t, short, 0, "ready")

	var (
		mu       sync.Mutex
		reports  []Transfer
		returned atomic.Bool
		late     atomic.Int32
	)
	rep, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), LeaveRunning: true, Logger: fixtureLogger(t), PreCopy: preCopy,
		Transfer: func(tr Transfer) {
			if returned.Load() {
				late.Add(1)
			}
			mu.Lock()
			reports = append(reports, tr)
			mu.Unlock()
		}})
	returned.Store(true)
	if err != nil {
		t.Fatal(err)
	}
	if n := late.Load(); n > 0 {
		t.Errorf("%d progress reports after Dump returned", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) == 0 {
		t.Fatalf("no progress report during a dump of %d MiB (%d pages stored)", mib, rep.Pages)
	}
	var last uint64
	round := 0
	for i, r := range reports {
		if r.Round < round || r.Round >= max(len(rep.Rounds), 1) {
			t.Errorf("report %d: round %d after round %d, of %d rounds", i, r.Round, round, len(rep.Rounds))
		}
		if r.Round != round {
			round, last = r.Round, 0
		}
		if r.Pages < last {
			t.Errorf("report %d: %d pages, fewer than the %d before in round %d", i, r.Pages, last, round)
		}
		last = r.Pages
		if r.Round == 0 && (r.Planned < mib<<20/pageSize || r.Planned > 2*mib<<20/pageSize) {
			t.Errorf("report %d: %d pages planned, want about %d (the process's memory)", i, r.Planned, mib<<20/pageSize)
		}
		if r.Pages > rep.Pages {
			t.Errorf("report %d reached %d pages, more than the %d the dump stored", i, r.Pages, rep.Pages)
		}
	}
	var names []string
	for _, st := range rep.Stages {
		names = append(names, st.Stage)
		if st.BusyMS <= 0 || st.MBPerS <= 0 {
			t.Errorf("stage %+v of a dump of %d pages", st, rep.Pages)
		}
	}
	if !slices.Equal(names, []string{"read", "compress", "wire"}) {
		t.Errorf("stages %v, want read, compress, wire", names)
	}
	t.Logf("%d reports, the last at %d of %d pages planned in round %d (%d stored, %d rounds)", len(reports), last, reports[len(reports)-1].Planned, round, rep.Pages, len(rep.Rounds))
}

// TestThrottleDump: a pre-copy dump with AutoConverge of a process that
// writes its 64 MiB as fast as it can throttles it (the rounds say how
// much), and leaves it running and untraced, its memory written on.
func TestThrottleDump(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "dirty"), "64", "100000", "600")
	p.WaitLine(t, short, 0, "ready")
	// A target no round can meet while the process writes: pre-copy
	// converges only once nothing is dirty, so it stalls, whatever the
	// load of the machine, and the throttle must engage.
	// Only a round with no page dirty converges: a writer that got no CPU
	// between two rounds on a loaded machine (seen: 24 ms), or one the
	// throttle kept stopped most of a round. Pre-copy is right to stop
	// then; a dump that converged before any throttle says nothing, and
	// is tried again (at most 10 times).
	pol := DefaultPolicy
	pol.AutoConverge, pol.TargetDowntime, pol.MaxRounds = true, time.Nanosecond, 4
	var rep *DumpReport
	for try := 0; ; try++ {
		var err error
		rep, err = Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), LeaveRunning: true, Logger: fixtureLogger(t),
			PreCopy: true, Policy: pol})
		if err != nil {
			t.Fatal(err)
		}
		converged := slices.ContainsFunc(rep.Rounds, func(r RoundReport) bool { return r.Stop == "converged" })
		throttled := slices.ContainsFunc(rep.Rounds, func(r RoundReport) bool { return r.Throttle > 0 })
		if !converged || throttled || try == 9 {
			break
		}
		t.Logf("try %d: pre-copy converged before any throttle (the writer was idle a round): again", try)
	}
	var top float64
	for _, r := range rep.Rounds {
		t.Logf("round %d: dirty %d, sent %d, %.1f ms, held %.1f ms (longest %.1f), throttle %.2f, stop %q", r.Round, r.PagesDirty, r.PagesSent, r.MS, r.HeldMS, r.MaxHoldMS, r.Throttle, r.Stop)
		if r.MaxHoldMS > r.HeldMS || (r.HeldMS > 0 && r.MaxHoldMS <= 0) {
			t.Errorf("round %d: longest hold %.3f ms of %.3f ms held", r.Round, r.MaxHoldMS, r.HeldMS)
		}
		if r.Frozen {
			continue // the final round: frozen, not throttled
		}
		if r.Throttle < top {
			t.Errorf("round %d: throttle %v, below the %v before", r.Round, r.Throttle, top)
		}
		top = max(top, r.Throttle)
		if r.Throttle > 0 && r.HeldMS <= 0 {
			t.Errorf("round %d: throttled %v but held 0 ms", r.Round, r.Throttle)
		}
	}
	if top == 0 {
		t.Errorf("a process writing its whole memory as fast as it can was never throttled")
	}
	testutil.RequireRunning(t, p.PID)
	if tp := testutil.StatusField(t, p.PID, "TracerPid"); tp != "0" {
		t.Errorf("after the dump, TracerPid %s", tp)
	}
	// It writes on: a tick line comes (it logs one each 100 ms of writes).
	n := len(p.Lines(t))
	p.WaitLine(t, short, n, "tick ")
}
