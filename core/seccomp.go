package core

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Seccomp modes (SECCOMP_MODE_*), as /proc/PID/status shows them.
const (
	SeccompModeStrict = 1
	SeccompModeFilter = 2
)

// Bounds the kernel puts on seccomp filters: BPF_MAXINSNS instructions in
// one program, MAX_INSNS_PER_PATH along a thread's whole chain, each
// filter below the newest counting 4 more.
const (
	MaxBPFInsns         = 4096
	MaxSeccompPathInsns = 32768
	seccompFilterCost   = 4
	// maxSeccompFilters bounds the distinct filters of a process (every
	// thread a chain of its own of the longest length the kernel takes:
	// far more than any real process has).
	maxSeccompFilters = 1 << 16
)

// Seccomp is a thread's seccomp state (a thread without seccomp has none).
type Seccomp struct {
	// Mode is SeccompModeStrict or SeccompModeFilter.
	Mode int `json:"mode"`
	// Filter is the index in Process.SeccompFilters of the thread's newest
	// filter (mode 2), -1 in mode 1.
	Filter int `json:"filter"`
}

// SeccompFilter is one filter of a process. The filters of a process form
// a tree, as in the kernel: each names the one it was stacked on, and
// threads that share a filter (inherited at clone, or given to every
// thread by SECCOMP_FILTER_FLAG_TSYNC) name the same one.
type SeccompFilter struct {
	// Prev is the index of the filter this one was stacked on, -1 if none;
	// always below this one's own index.
	Prev int `json:"prev"`
	// Log is SECCOMP_FILTER_FLAG_LOG.
	Log bool `json:"log,omitempty"`
	// Prog is the classic BPF program as the thread installed it: struct
	// sock_filter (code u16, jt u8, jf u8, k u32, little-endian), 8 bytes
	// an instruction.
	Prog []byte `json:"prog"`
}

// SeccompChain returns the filters of the chain whose newest is
// filters[newest], the oldest first (the order of installation). The
// filters must be valid (Prev below their own index).
func SeccompChain(filters []SeccompFilter, newest int) []int {
	var chain []int
	for i := newest; i >= 0 && i < len(filters); i = filters[i].Prev {
		chain = append(chain, i)
		if filters[i].Prev >= i {
			break
		}
	}
	for a, b := 0, len(chain)-1; a < b; a, b = a+1, b-1 {
		chain[a], chain[b] = chain[b], chain[a]
	}
	return chain
}

// Classic BPF return instructions and the seccomp action that hands a
// system call to a user-space listener.
const (
	bpfRetK             = 0x06 // BPF_RET|BPF_K
	bpfRetA             = 0x16 // BPF_RET|BPF_A
	bpfClass            = 0x07
	bpfRet              = 0x06
	seccompRetActFull   = 0xffff0000
	seccompRetUserNotif = 0x7fc00000
)

// ErrSeccompUserNotif: a seccomp filter may return SECCOMP_RET_USER_NOTIF,
// handing system calls to a listener (an fd of some other process, a
// container runtime's supervisor) that a restore cannot bring back.
var ErrSeccompUserNotif = errors.New("the filter may hand system calls to a user-space listener (SECCOMP_RET_USER_NOTIF)")

// CheckSeccompProg checks what a restore asks of a filter program: a whole
// number of instructions, 1..MaxBPFInsns of them, and no return of
// SECCOMP_RET_USER_NOTIF, nor of a value it computes (BPF_RET|BPF_A), which
// could be that. The kernel checks the rest when the filter is installed.
func CheckSeccompProg(prog []byte) error {
	n := len(prog) / 8
	if len(prog)%8 != 0 || n < 1 || n > MaxBPFInsns {
		return fmt.Errorf("seccomp program of %d bytes (1..%d instructions of 8 bytes)", len(prog), MaxBPFInsns)
	}
	for i := 0; i < n; i++ {
		ins := prog[8*i:]
		code := binary.LittleEndian.Uint16(ins)
		if code&bpfClass != bpfRet {
			continue
		}
		k := binary.LittleEndian.Uint32(ins[4:])
		switch {
		case code == bpfRetK && k&seccompRetActFull == seccompRetUserNotif:
			return fmt.Errorf("instruction %d: %w", i, ErrSeccompUserNotif)
		case code == bpfRetA:
			return fmt.Errorf("instruction %d returns a computed action: %w", i, ErrSeccompUserNotif)
		}
	}
	return nil
}
