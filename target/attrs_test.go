package target

import (
	"errors"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestRestoreRefusesMissingCPUs: a thread bound to a CPU this host lacks
// is refused with an *AffinityError before anything is created, rather
// than run on fewer CPUs than it had.
func TestRestoreRefusesMissingCPUs(t *testing.T) {
	testutil.RequireRoot(t)
	img := handMade(t)
	img.Process.Threads[0].Sched.Affinity = make([]uint64, core.MaxCPUs/64)
	img.Process.Threads[0].Sched.Affinity[core.MaxCPUs/64-1] = 1 << 63 // CPU 1023
	dir := write(t, img)
	err := refuse(t, dir, img.Process.PID)
	var ae *AffinityError
	if !errors.As(err, &ae) || ae.TID != img.Process.PID || ae.Want != "1023" {
		t.Fatalf("error %v (%T), want an *AffinityError naming thread %d and CPU 1023", err, err, img.Process.PID)
	}
}

// TestRestoreRefusesNoAttrs: an image without the process attributes or
// a thread's scheduling state (an older build's) is refused before
// anything is created, not restored with the defaults.
func TestRestoreRefusesNoAttrs(t *testing.T) {
	testutil.RequireRoot(t)
	for name, edit := range map[string]func(*core.Image){
		"process": func(img *core.Image) { img.Process.Attrs = nil },
		"thread":  func(img *core.Image) { img.Process.Threads[0].Sched = nil },
	} {
		t.Run(name, func(t *testing.T) {
			img := handMade(t)
			edit(img)
			err := refuse(t, write(t, img), img.Process.PID)
			if !errors.Is(err, core.ErrInconsistent) {
				t.Fatalf("error %v, want core.ErrInconsistent", err)
			}
		})
	}
}
