package source

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
)

// The probe of membarrier registrations (kernels before 6.3) finds the
// private expedited registrations a process made, as
// MEMBARRIER_CMD_GET_REGISTRATIONS reports them here, and takes the
// global one as made.
func TestProbeMembarrier(t *testing.T) {
	testutil.RequireRoot(t)
	p, tracer, tp := seizeCounter(t)
	d := &dumper{pid: p.PID, p: tp}
	for _, reg := range []uint64{0, 1 << 4, 1 << 8} { // none, then PRIVATE_EXPEDITED, then ..._RSEQ too
		var probed, reported uint64
		err := tracer.Do(func() error {
			if reg != 0 {
				if _, err := tp.Syscall(tp.Leader(), "membarrier(register)", unix.SYS_MEMBARRIER, reg, 0, 0); err != nil {
					return err
				}
			}
			var err error
			if probed, err = d.probeMembarrier(tp.Leader()); err != nil {
				return err
			}
			reported, err = tp.Syscall(tp.Leader(), "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)", unix.SYS_MEMBARRIER, membarrierGetRegistrations, 0, 0)
			return err
		})
		if err != nil {
			testutil.Unavailable(t, "membarrier registrations (Linux 6.3+, CONFIG_RSEQ): %v", err)
		}
		if probed != reported|membarrierGlobal {
			t.Errorf("after registering %#x: probed %#x, the kernel reports %#x (the probe adds the global %#x)", reg, probed, reported, membarrierGlobal)
		}
	}
}
