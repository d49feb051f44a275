//go:build linux

package raw

import "golang.org/x/sys/unix"

// The ptrace calls below are plain system calls: the caller runs them on
// the thread that traces tid (core/ptrace's tracer thread), which is what
// makes them work at all.

// Ptrace is ptrace(req, pid, addr, data) for a request whose addr and data
// are values, not pointers (PTRACE_SEIZE with its options, PTRACE_INTERRUPT,
// PTRACE_CONT, PTRACE_SYSCALL, PTRACE_DETACH).
func Ptrace(req, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// SiginfoSize is sizeof(siginfo_t).
const SiginfoSize = 128

// PtraceRseqConfiguration is struct ptrace_rseq_configuration
// (include/uapi/linux/ptrace.h).
type PtraceRseqConfiguration struct {
	Addr  uint64
	Len   uint32
	Sig   uint32
	Flags uint32
	_     uint32
}

// peekSiginfoArgs is struct ptrace_peeksiginfo_args.
type peekSiginfoArgs struct {
	off   uint64
	flags uint32
	nr    int32
}

// PtracePeekSiginfo reads the signals queued for thread tid (or, with
// shared, for its whole process) without dequeuing them, SiginfoSize bytes
// each; at most 65536 and a batch.
func PtracePeekSiginfo(tid int, shared bool) ([][]byte, error) {
	var out [][]byte
	buf := make([]byte, SiginfoSize*32)
	for {
		a := peekSiginfoArgs{off: uint64(len(out)), nr: 32}
		if shared {
			a.flags = unix.PTRACE_PEEKSIGINFO_SHARED
		}
		n, err := ptracePeekSiginfo(tid, &a, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		for i := range n {
			out = append(out, append([]byte(nil), buf[i*SiginfoSize:(i+1)*SiginfoSize]...))
		}
		if len(out) > 1<<16 {
			return out, nil
		}
	}
}
