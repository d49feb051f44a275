// Package source is the dumping side of migrate: it freezes a process,
// collects its state through /proc, ptrace and syscall injection, and writes
// an image (metadata plus a page stream). On any failure before the end of a
// dump the process is left running exactly as it was.
//
// The state of the frozen process is collected in phases (frozen.go), the
// same for an offline dump (Dump) and for the final state of a live
// migration (Migrate). Its sockets are described by the sockets
// subpackage, which reads TCP connections in repair mode too; the network
// lock around them is this package's (network.go).
//
// source must not know how the target restores.
package source
