//go:build linux

package raw

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// pidtypePID is PIDTYPE_PID: PR_SCHED_CORE on one thread.
const pidtypePID = 0

// SchedCoreGet reads thread tid's core-scheduling cookie
// (prctl(PR_SCHED_CORE, PR_SCHED_CORE_GET)): 0 if it has none. It needs
// ptrace read access to tid; ENODEV where there is no core scheduling
// (no SMT), EINVAL before Linux 5.14.
func SchedCoreGet(tid int, cookie *uint64) error {
	return unix.Prctl(unix.PR_SCHED_CORE, unix.PR_SCHED_CORE_GET, uintptr(tid), pidtypePID, uintptr(unsafe.Pointer(cookie)))
}
