// Package source is the dumping side of migrate: it freezes a process,
// collects its state through /proc, ptrace and syscall injection, and writes
// an image (metadata plus a page stream). On any failure before the end of a
// dump the process is left running exactly as it was.
//
// source must not know how the target restores.
package source
