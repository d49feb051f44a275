package core

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// bpf assembles classic BPF instructions {code, jt, jf, k}.
func bpf(ins ...[4]uint32) []byte {
	b := make([]byte, 8*len(ins))
	for i, in := range ins {
		binary.LittleEndian.PutUint16(b[8*i:], uint16(in[0]))
		b[8*i+2], b[8*i+3] = byte(in[1]), byte(in[2])
		binary.LittleEndian.PutUint32(b[8*i+4:], in[3])
	}
	return b
}

// allow is the smallest filter: return SECCOMP_RET_ALLOW.
var allow = bpf([4]uint32{bpfRetK, 0, 0, 0x7fff0000})

// seccompImage is validImage with two filters: one shared by both
// threads, and one stacked on it in the second thread.
func seccompImage() *Image {
	img := validImage()
	img.Process.SeccompFilters = []SeccompFilter{
		{Prev: -1, Prog: allow},
		{Prev: 0, Log: true, Prog: bpf([4]uint32{0x20, 0, 0, 0}, [4]uint32{bpfRetK, 0, 0, 0x00050001})},
	}
	img.Process.Threads[0].Seccomp = &Seccomp{Mode: SeccompModeFilter, Filter: 0}
	img.Process.Threads[1].Seccomp = &Seccomp{Mode: SeccompModeFilter, Filter: 1}
	return img
}

// TestValidateSeccomp: an image's seccomp state is taken only if a
// restore can install it as it is, and nothing unbounded: programs of
// 1..4096 instructions, chains the kernel takes, each filter stacked on
// an earlier one and a thread's, no user-space listener.
func TestValidateSeccomp(t *testing.T) {
	good, _ := json.Marshal(seccompImage())
	img, err := DecodeImage(bytes.NewReader(good))
	if err != nil {
		t.Fatalf("valid image refused: %v", err)
	}
	if got := SeccompChain(img.Process.SeccompFilters, img.Process.Threads[1].Seccomp.Filter); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("chain of thread 1: %v, want [0 1]", got)
	}
	// The longest chain the kernel takes passes: 6553 one-instruction
	// filters count 6553+4*6552 = 32761 instructions.
	long := seccompImage()
	long.Process.SeccompFilters = nil
	for i := range 6553 {
		long.Process.SeccompFilters = append(long.Process.SeccompFilters, SeccompFilter{Prev: i - 1, Prog: allow})
	}
	long.Process.Threads[1].Seccomp.Filter = 6552
	if err := long.Validate(); err != nil {
		t.Errorf("the longest chain the kernel takes refused: %v", err)
	}
	strict := seccompImage()
	strict.Process.Threads[1].Seccomp = &Seccomp{Mode: SeccompModeStrict, Filter: -1}
	strict.Process.SeccompFilters = strict.Process.SeccompFilters[:1]
	if err := strict.Validate(); err != nil {
		t.Errorf("a strict thread refused: %v", err)
	}

	for name, edit := range map[string]func(p *Process){
		"empty program":        func(p *Process) { p.SeccompFilters[0].Prog = nil },
		"half an instruction":  func(p *Process) { p.SeccompFilters[0].Prog = allow[:4] },
		"4097 instructions":    func(p *Process) { p.SeccompFilters[0].Prog = bytes.Repeat(allow, MaxBPFInsns+1) },
		"user notification":    func(p *Process) { p.SeccompFilters[1].Prog = bpf([4]uint32{bpfRetK, 0, 0, 0x7fc00000}) },
		"computed action":      func(p *Process) { p.SeccompFilters[1].Prog = bpf([4]uint32{bpfRetA, 0, 0, 0}) },
		"stacked on itself":    func(p *Process) { p.SeccompFilters[1].Prev = 1 },
		"stacked on a later":   func(p *Process) { p.SeccompFilters[0].Prev = 1 },
		"stacked on -2":        func(p *Process) { p.SeccompFilters[0].Prev = -2 },
		"no thread's":          func(p *Process) { p.Threads[1].Seccomp = nil },
		"thread filter beyond": func(p *Process) { p.Threads[1].Seccomp.Filter = 2 },
		"thread filter -1":     func(p *Process) { p.Threads[1].Seccomp.Filter = -1 },
		"mode 3":               func(p *Process) { p.Threads[1].Seccomp.Mode = 3 },
		"mode 0":               func(p *Process) { p.Threads[1].Seccomp.Mode = 0 },
		"strict with a filter": func(p *Process) { p.Threads[0].Seccomp = &Seccomp{Mode: SeccompModeStrict, Filter: 0} },
		"chain too long": func(p *Process) {
			p.SeccompFilters = []SeccompFilter{{Prev: -1, Prog: bytes.Repeat(allow, MaxBPFInsns)}}
			for i := 1; i < 9; i++ {
				p.SeccompFilters = append(p.SeccompFilters, SeccompFilter{Prev: i - 1, Prog: bytes.Repeat(allow, MaxBPFInsns)})
			}
			p.Threads[0].Seccomp.Filter, p.Threads[1].Seccomp.Filter = 8, 8
		},
		"too many filters": func(p *Process) {
			p.SeccompFilters = make([]SeccompFilter, maxSeccompFilters+1)
		},
	} {
		img := seccompImage()
		edit(&img.Process)
		b, _ := json.Marshal(img)
		if _, err := DecodeImage(bytes.NewReader(b)); !errors.Is(err, ErrInconsistent) {
			t.Errorf("%s: %v, want ErrInconsistent", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// An image without seccomp state (made before it was carried) decodes
	// to threads without seccomp.
	old, _ := json.Marshal(validImage())
	if bytes.Contains(old, []byte("seccomp")) {
		t.Fatalf("an image without seccomp names it: %s", old)
	}
	if img, err := DecodeImage(bytes.NewReader(old)); err != nil || img.Process.Threads[0].Seccomp != nil {
		t.Errorf("image without seccomp: %v, %+v", err, img)
	}
}

// TestCheckSeccompProg: a user notification is found wherever it is
// returned; every other action passes.
func TestCheckSeccompProg(t *testing.T) {
	for _, k := range []uint32{0, 0x80000000, 0x7ff00000, 0x7ffc0000, 0x00030000, 0x00050001, 0x7fff0000} {
		if err := CheckSeccompProg(bpf([4]uint32{0x15, 0, 1, 39}, [4]uint32{bpfRetK, 0, 0, k}, [4]uint32{bpfRetK, 0, 0, 0x7fff0000})); err != nil {
			t.Errorf("action %#x: %v", k, err)
		}
	}
	prog := bpf([4]uint32{0x15, 0, 1, 39}, [4]uint32{bpfRetK, 0, 0, 0x7fff0000}, [4]uint32{bpfRetK, 0, 0, 0x7fc00000})
	if err := CheckSeccompProg(prog); !errors.Is(err, ErrSeccompUserNotif) {
		t.Errorf("user notification in instruction 2: %v", err)
	}
}
