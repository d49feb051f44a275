package e2e

import (
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestSigtrapStates: a process with SIGTRAP at its default, blocked,
// ignored or handled, and every other signal's action varied, comes back
// with each action, its blocked set and its ignored and caught sets as
// they were: the batched injections (which end on a SIGTRAP of their own)
// leave SIGTRAP alone on both sides, and the process runs on.
func TestSigtrapStates(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []string{"plain", "block", "ignore", "handle"} {
		t.Run(mode, func(t *testing.T) {
			p := testutil.Start(t, testutil.Build(t, "sigtrap"), mode)
			p.WaitTick(t, short, 2)
			before := testutil.Take(t, p.PID)
			dir, img := dumpKill(t, p, "")
			if len(img.Process.Sigactions) != 64 {
				t.Fatalf("%d signal actions in the image", len(img.Process.Sigactions))
			}
			want := map[string]core.Sigaction{"plain": {}, "block": {}, "ignore": {Handler: 1}}[mode]
			if got := img.Process.Sigactions[4]; mode != "handle" && got.Handler != want.Handler {
				t.Errorf("SIGTRAP's action in the image: %+v", got)
			}
			last := p.LastTick(t)
			r := restoreOK(t, dir, p.Log)
			after := testutil.Take(t, r.PID)
			for _, f := range []string{"SigBlk", "SigIgn", "SigCgt"} {
				if before.Status[f] != after.Status[f] {
					t.Errorf("%s: %s before the dump, %s after the restore", f, before.Status[f], after.Status[f])
				}
			}
			r.WaitTick(t, short, last+2)
			for _, l := range r.Lines(t) {
				if len(l) >= 4 && l[:4] == "trap" {
					t.Errorf("a SIGTRAP reached the process: %q", l)
				}
			}
		})
	}
}
