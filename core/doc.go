// Package core holds the process image model shared by the dumping side
// (package source) and the restoring side (package target): a process, its
// threads, memory areas, file descriptors and signal state, and the versioned
// encoding of that model on disk.
//
// The model is plain data: addresses are uint64, flags are the kernel's
// numeric values, and nothing here makes a system call. The Linux machinery
// lives in the subpackages: core/proc parses /proc, core/ptrace owns the
// tracer thread and syscall injection, core/kernel detects features.
//
// core must not know about networking or compression.
package core
