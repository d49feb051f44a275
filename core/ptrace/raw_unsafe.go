package ptrace

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ptrace requests and options that x/sys/unix wraps poorly or not at all.
const (
	reqSeize          = 0x4206
	reqInterrupt      = 0x4207
	reqGetSigmask     = 0x420a
	reqSetSigmask     = 0x420b
	reqPeekSiginfo    = 0x4209
	reqGetRegset      = 0x4204
	reqSetRegset      = 0x4205
	reqGetSiginfo     = 0x4202
	reqGetRseqConf    = 0x420f
	ntX86Xstate       = 0x202
	peekSiginfoShared = 1
)

func rawPtrace(req int, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func seize(pid int, opts int) error {
	return rawPtrace(reqSeize, pid, 0, uintptr(opts))
}

func getSigmask(tid int) (uint64, error) {
	var m uint64
	err := rawPtrace(reqGetSigmask, tid, 8, uintptr(unsafe.Pointer(&m)))
	return m, err
}

func setSigmask(tid int, m uint64) error {
	return rawPtrace(reqSetSigmask, tid, 8, uintptr(unsafe.Pointer(&m)))
}

// SiginfoSize is sizeof(siginfo_t).
const SiginfoSize = 128

type peekSiginfoArgs struct {
	off   uint64
	flags uint32
	nr    int32
}

// peekSiginfo reads queued signals without dequeuing them.
func peekSiginfo(tid int, shared bool) ([][]byte, error) {
	var out [][]byte
	buf := make([]byte, SiginfoSize*32)
	for {
		a := peekSiginfoArgs{off: uint64(len(out)), nr: 32}
		if shared {
			a.flags = peekSiginfoShared
		}
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, reqPeekSiginfo, uintptr(tid),
			uintptr(unsafe.Pointer(&a)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if e != 0 {
			return nil, e
		}
		if n == 0 {
			return out, nil
		}
		for i := 0; i < int(n); i++ {
			out = append(out, append([]byte(nil), buf[i*SiginfoSize:(i+1)*SiginfoSize]...))
		}
		if len(out) > 1<<16 {
			return out, nil
		}
	}
}

func getSiginfo(tid int) ([]byte, error) {
	buf := make([]byte, SiginfoSize)
	err := rawPtrace(reqGetSiginfo, tid, 0, uintptr(unsafe.Pointer(&buf[0])))
	return buf, err
}

// xstateMax bounds the XSAVE area (AMX makes it ~11 KiB).
const xstateMax = 1 << 14

func getXstate(tid int) ([]byte, error) {
	buf := make([]byte, xstateMax)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := rawPtrace(reqGetRegset, tid, ntX86Xstate, uintptr(unsafe.Pointer(&iov))); err != nil {
		return nil, err
	}
	return buf[:iov.Len], nil
}

func setXstate(tid int, x []byte) error {
	if len(x) == 0 {
		return nil
	}
	iov := unix.Iovec{Base: &x[0]}
	iov.SetLen(len(x))
	return rawPtrace(reqSetRegset, tid, ntX86Xstate, uintptr(unsafe.Pointer(&iov)))
}

// rseqConfig is struct ptrace_rseq_configuration.
type rseqConfig struct {
	Addr  uint64
	Len   uint32
	Sig   uint32
	Flags uint32
	_     uint32
}

func getRseq(tid int) (rseqConfig, error) {
	var c rseqConfig
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, reqGetRseqConf, uintptr(tid),
		unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)), 0, 0)
	if e != 0 {
		return c, e
	}
	return c, nil
}

// Bytes views a value as bytes, for structures passed to injected calls.
func Bytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// tgsigqueueinfo queues signal sig with the siginfo si (SiginfoSize bytes)
// to thread tid of process pid (rt_tgsigqueueinfo). The kernel takes from
// another process only si_codes below 0 other than SI_TKILL (a sigqueue,
// a timer, ...).
func tgsigqueueinfo(pid, tid int, sig uint32, si []byte) error {
	if len(si) < SiginfoSize {
		return unix.EINVAL
	}
	_, _, e := unix.Syscall6(unix.SYS_RT_TGSIGQUEUEINFO, uintptr(pid), uintptr(tid), uintptr(sig), uintptr(unsafe.Pointer(&si[0])), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// bpfInsnSize is sizeof(struct sock_filter).
const bpfInsnSize = 8

// getSeccompFilter reads filter index of thread tid (0: the oldest) with
// PTRACE_SECCOMP_GET_FILTER: first its length, then its instructions.
func getSeccompFilter(tid, index int) ([]byte, error) {
	n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), 0, 0, 0)
	if e != 0 {
		return nil, e
	}
	if n == 0 || n > 1<<16 {
		return nil, fmt.Errorf("seccomp filter %d of thread %d: %d instructions", index, tid, n)
	}
	buf := make([]byte, n*bpfInsnSize)
	m, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
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

// getSeccompMetadata returns the flags of filter index of thread tid
// (PTRACE_SECCOMP_GET_METADATA).
func getSeccompMetadata(tid, index int) (uint64, error) {
	md := seccompMetadata{FilterOff: uint64(index)}
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_METADATA, uintptr(tid), unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return md.Flags, nil
}
