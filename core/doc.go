// Package core holds the process image model shared by the dumping side
// (package source) and the restoring side (package target): a process, its
// threads, memory areas, file descriptors and signal state, and the versioned
// encoding of that model on disk.
//
// The model is plain data: addresses are uint64, flags are the kernel's
// numeric values, and nothing here makes a system call (the image's own
// files are read and checked here: image.json, blobs' sizes and sums). The
// Linux machinery lives in the subpackages: core/proc parses /proc,
// core/ptrace owns the tracer thread and syscall injection, core/kernel
// detects features, core/netlock silences a process's connections while it
// moves (nftables) and keeps the packets it drops, core/netaddr moves a
// service address (rtnetlink, gratuitous ARP / unsolicited NA), core/hook
// runs the operator's commands at a migration's stages, and core/reap
// collects orphans for a PID 1 service without taking its own children.
//
// core must not know about networking or compression.
package core
