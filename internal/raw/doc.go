//go:build linux

// Package raw is migrate's one door to the kernel interfaces that
// golang.org/x/sys/unix does not wrap, or wraps only through unsafe
// pointers: ioctls with a struct argument, PAGEMAP_SCAN, userfaultfd (open,
// UFFDIO_API feature query, register and write-protect), getsockopt and
// setsockopt of raw structs, process_vm_readv and process_vm_writev,
// get_robust_list, clone3 with set_tid, PR_SET_MM_MAP and the ptrace
// requests x/sys lacks; and the kernel ABI constants and structs they take
// (uapi.go), named as in the uapi headers.
//
// Every use of unsafe in migrate is in this package's *_unsafe.go files;
// nothing else converts a pointer to a uintptr. Wrappers return the kernel's
// syscall.Errno unwrapped (callers add what they were doing, and
// errors.Is(err, unix.ESRCH) keeps working) and retry EINTR themselves where
// the call can be interrupted; IgnoringEINTR is the one retry loop for
// calls made elsewhere.
//
// The name is short on purpose: call sites read raw.Ioctl, raw.PagemapScan.
// The package knows nothing of processes, images or migration; it imports
// only the standard library and x/sys/unix. Linux only; the struct layouts
// and ioctl numbers are those of x86-64 (and of every 64-bit architecture
// with the generic ioctl encoding).
package raw
