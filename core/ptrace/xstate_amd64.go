//go:build linux && amd64

package ptrace

import (
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// xstateMax bounds the XSAVE area (AMX makes it ~11 KiB).
const xstateMax = 1 << 14

// getXstate reads the XSAVE area (NT_X86_XSTATE) of thread tid.
func getXstate(tid int) ([]byte, error) {
	return raw.PtraceGetRegset(tid, unix.NT_X86_XSTATE, make([]byte, xstateMax))
}

// setXstate writes the XSAVE area x (nothing when empty) of thread tid.
func setXstate(tid int, x []byte) error {
	if len(x) == 0 {
		return nil
	}
	return raw.PtraceSetRegset(tid, unix.NT_X86_XSTATE, x)
}
