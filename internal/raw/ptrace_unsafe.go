//go:build linux

package raw

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

var _ [24]byte = [unsafe.Sizeof(PtraceRseqConfiguration{})]byte{}

// PtraceGetSigmask is PTRACE_GETSIGMASK: the blocked signals of thread tid.
func PtraceGetSigmask(tid int) (uint64, error) {
	var m uint64
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGMASK, uintptr(tid), 8, uintptr(unsafe.Pointer(&m)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return m, nil
}

// PtraceSetSigmask is PTRACE_SETSIGMASK.
func PtraceSetSigmask(tid int, m uint64) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SETSIGMASK, uintptr(tid), 8, uintptr(unsafe.Pointer(&m)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// ptracePeekSiginfo is one PTRACE_PEEKSIGINFO into buf; it returns the
// number of siginfos read.
func ptracePeekSiginfo(tid int, a *peekSiginfoArgs, buf []byte) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(tid),
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	runtime.KeepAlive(a)
	runtime.KeepAlive(buf)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// PtraceGetSiginfo is PTRACE_GETSIGINFO: the siginfo of the signal that
// stopped thread tid, SiginfoSize bytes.
func PtraceGetSiginfo(tid int) ([]byte, error) {
	buf := make([]byte, SiginfoSize)
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	if e != 0 {
		return buf, e
	}
	return buf, nil
}

// PtraceGetRegset is PTRACE_GETREGSET of the register set nt (NT_*) of
// thread tid into buf; it returns the part of buf the kernel filled.
func PtraceGetRegset(tid, nt int, buf []byte) ([]byte, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETREGSET, uintptr(tid), uintptr(nt), uintptr(unsafe.Pointer(&iov)), 0, 0)
	runtime.KeepAlive(buf)
	if e != 0 {
		return nil, e
	}
	return buf[:iov.Len], nil
}

// PtraceSetRegset is PTRACE_SETREGSET of the register set nt of thread tid
// from b (not empty).
func PtraceSetRegset(tid, nt int, b []byte) error {
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SETREGSET, uintptr(tid), uintptr(nt), uintptr(unsafe.Pointer(&iov)), 0, 0)
	runtime.KeepAlive(b)
	if e != 0 {
		return e
	}
	return nil
}

// PtraceGetRseqConfiguration is PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13):
// the rseq registration of thread tid.
func PtraceGetRseqConfiguration(tid int) (PtraceRseqConfiguration, error) {
	var c PtraceRseqConfiguration
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GET_RSEQ_CONFIGURATION, uintptr(tid),
		unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)), 0, 0)
	if e != 0 {
		return c, e
	}
	return c, nil
}

// Tgsigqueueinfo queues signal sig with the siginfo si (SiginfoSize bytes)
// to thread tid of process pid (rt_tgsigqueueinfo). The kernel takes from
// another process only si_codes below 0 other than SI_TKILL (a sigqueue,
// a timer, ...).
func Tgsigqueueinfo(pid, tid int, sig uint32, si []byte) error {
	if len(si) < SiginfoSize {
		return unix.EINVAL
	}
	_, _, e := unix.Syscall6(unix.SYS_RT_TGSIGQUEUEINFO, uintptr(pid), uintptr(tid), uintptr(sig), uintptr(unsafe.Pointer(&si[0])), 0, 0)
	runtime.KeepAlive(si)
	if e != 0 {
		return e
	}
	return nil
}

// Sigqueueinfo queues signal sig with the siginfo si (SiginfoSize bytes) to
// process pid (rt_sigqueueinfo), with the same rules for si_code as
// Tgsigqueueinfo.
func Sigqueueinfo(pid int, sig uint32, si []byte) error {
	if len(si) < SiginfoSize {
		return unix.EINVAL
	}
	_, _, e := unix.Syscall(unix.SYS_RT_SIGQUEUEINFO, uintptr(pid), uintptr(sig), uintptr(unsafe.Pointer(&si[0])))
	runtime.KeepAlive(si)
	if e != 0 {
		return e
	}
	return nil
}

// bpfInsnSize is sizeof(struct sock_filter).
const bpfInsnSize = 8

// PtraceSeccompGetFilter reads seccomp filter index of thread tid (0: the
// oldest) with PTRACE_SECCOMP_GET_FILTER, as struct sock_filter records:
// first its length, then its instructions.
func PtraceSeccompGetFilter(tid, index int) ([]byte, error) {
	n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), 0, 0, 0)
	if e != 0 {
		return nil, e
	}
	if n == 0 || n > 1<<16 {
		return nil, fmt.Errorf("seccomp filter %d of thread %d: %d instructions", index, tid, n)
	}
	buf := make([]byte, n*bpfInsnSize)
	m, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	runtime.KeepAlive(buf)
	if e != 0 {
		return nil, e
	}
	if m != n {
		return nil, fmt.Errorf("seccomp filter %d of thread %d: %d instructions, then %d", index, tid, n, m)
	}
	return buf, nil
}

// seccompMetadata is struct seccomp_metadata.
type seccompMetadata struct {
	FilterOff uint64
	Flags     uint64
}

// PtraceSeccompGetMetadata returns the flags (SECCOMP_FILTER_FLAG_*) of
// seccomp filter index of thread tid (PTRACE_SECCOMP_GET_METADATA).
func PtraceSeccompGetMetadata(tid, index int) (uint64, error) {
	md := seccompMetadata{FilterOff: uint64(index)}
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_METADATA, uintptr(tid), unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return md.Flags, nil
}
