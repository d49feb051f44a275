// Package kernel finds out which kernel mechanisms work on this host, by
// using them (never by reading the kernel configuration). The kernel ABI
// constants and structs that golang.org/x/sys/unix lacks, and the raw calls
// that take them, are in internal/raw.
//
// Check runs one probe per mechanism: ptrace seize and interrupt, syscall
// injection (through a function the caller passes in, from core/ptrace),
// pidfd_getfd, clone3 with set_tid, PR_SET_MM_MAP, process_vm_readv and
// writev, soft-dirty, userfaultfd async write-protect with PAGEMAP_SCAN, TCP
// repair, and the vdso layout. Each probe is also exported on its own
// (ProbeSoftDirty, ...), so that a caller can choose a backend. A mechanism
// that does not work gives an error matching ErrNotSupported, usually an
// *UnsupportedFeatureError that says why.
//
// Probes that must change a process or need one to look at use a helper
// child: the running binary re-executed through /proc/self/exe with a hidden
// first argument. This package's init function turns any binary that
// links it into such a helper when asked (see helper.go), so migrate and
// every test binary can probe without a main of their own taking part.
// Probes start, end and reap their helpers; they leave no process, fd or
// mapping behind.
//
// The package is Linux and x86-64 only. It uses core/proc to read /proc and
// internal/raw for system calls, and
// knows nothing of the image model, of networking or of compression.
package kernel
