package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/procmig/migrate/core/kernel"
)

// ownImage is this test process's vdso, as mapped.
func ownImage(t testing.TB) (uint64, []byte) {
	at, img, err := kernel.OwnVDSO()
	if err != nil {
		t.Skipf("no vdso to parse: %v", err)
	}
	return at, img
}

// target decodes the jump at off of the proxy mapped at at: where it goes,
// or the system call it makes.
func jumpTarget(t *testing.T, p []byte, at, off uint64) (to uint64, nr uint32) {
	t.Helper()
	b := p[off:]
	switch {
	case b[0] == 0xe9:
		return at + off + jmpRel32Len + uint64(int64(int32(binary.LittleEndian.Uint32(b[1:])))), 0
	case b[0] == 0x48 && b[1] == 0xb8 && b[10] == 0xff && b[11] == 0xe0:
		return binary.LittleEndian.Uint64(b[2:]), 0
	case b[0] == 0xb8 && b[5] == 0x0f && b[6] == 0x05 && b[7] == 0xc3:
		return 0, binary.LittleEndian.Uint32(b[1:])
	}
	t.Fatalf("no jump at +%#x: %x", off, b[:12])
	return 0, 0
}

// The proxy of this kernel's vdso to itself elsewhere: every function
// jumps to its own name's (near: jmp rel32; far: movabs, jmp rax), but
// getrandom, which makes its system call; the rest of the image is kept.
func TestBuildProxy(t *testing.T) {
	here, img := ownImage(t)
	funcs, err := kernel.VDSOFuncs(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []uint64{here - 0x100000, here - 1<<40} {
		p, err := buildProxy(img, at, img, here, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != len(img) || !bytes.Equal(p[:64], img[:64]) {
			t.Fatalf("proxy of %d bytes, header %x; want %d bytes, header %x", len(p), p[:64], len(img), img[:64])
		}
		for _, f := range funcs {
			to, nr := jumpTarget(t, p, at, f.Off)
			switch vdsoBase(f.Name) {
			case "getrandom":
				if nr != 318 {
					t.Errorf("%s: system call %d, jump to %#x; want getrandom's (318)", f.Name, nr, to)
				}
			default:
				if to != here+f.Off {
					t.Errorf("%s (+%#x): jump to %#x, want %#x", f.Name, f.Off, to, here+f.Off)
				}
			}
		}
	}
}

// A function the new vdso lacks is made a system call if it is one of
// x86-64's, and refused by name otherwise.
func TestBuildProxyMissing(t *testing.T) {
	here, img := ownImage(t)
	// This kernel's vdso without getcpu.
	cur := bytes.ReplaceAll(img, []byte("getcpu\x00"), []byte("getcpX\x00"))
	p, err := buildProxy(img, here-0x100000, cur, here, false)
	if err != nil {
		t.Fatal(err)
	}
	funcs, _ := kernel.VDSOFuncs(img)
	for _, f := range funcs {
		if vdsoBase(f.Name) == "getcpu" {
			if _, nr := jumpTarget(t, p, here-0x100000, f.Off); nr != 309 {
				t.Errorf("%s: system call %d, want 309", f.Name, nr)
			}
		}
	}
	// An old vdso with a function no kernel has.
	old := bytes.ReplaceAll(img, []byte("__vdso_time\x00"), []byte("__vdso_tXme\x00"))
	_, err = buildProxy(old, here-0x100000, img, here, false)
	var ue *UnservedError
	if !errors.As(err, &ue) || !slices.Contains(ue.Names, "__vdso_tXme") {
		t.Fatalf("got %v, want an UnservedError naming __vdso_tXme", err)
	}
}

// FuzzBuildProxy: a proxy of any image parsed is built or refused,
// never a panic, and it keeps the image's length.
func FuzzBuildProxy(f *testing.F) {
	if _, img, err := kernel.OwnVDSO(); err == nil {
		f.Add(img)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := buildProxy(b, 1<<40, b, 1<<20, false)
		if err == nil && len(p) != len(b) {
			t.Fatalf("proxy of %d bytes for an image of %d", len(p), len(b))
		}
	})
}

// A function for SGX enclaves that this kernel's vdso lacks fails
// (-EFAULT) for a process without an enclave, and is refused for one with
// an enclave; an unknown function is refused.
func TestEntryCode(t *testing.T) {
	here := map[string]uint64{"__vdso_time": 0x100}
	fail := []byte{0x48, 0xc7, 0xc0, 0xf2, 0xff, 0xff, 0xff, 0xc3}
	for _, tc := range []struct {
		name    string
		enclave bool
		want    []byte
	}{
		{"__vdso_time", false, []byte{0xe9, 0xfb, 0x10, 0, 0}}, // from 0x1000 to 0x2100
		{"__vdso_gettimeofday", false, []byte{0xb8, 96, 0, 0, 0, 0x0f, 0x05, 0xc3}},
		{"__vdso_sgx_enter_enclave", false, fail},
		{"__vdso_sgx_enter_enclave", true, nil},
		{"__vdso_frobnicate", false, nil},
	} {
		if got := entryCode(tc.name, 0x1000, here, 0x2000, tc.enclave); !bytes.Equal(got, tc.want) {
			t.Errorf("%s (enclave %v): % x, want % x", tc.name, tc.enclave, got, tc.want)
		}
	}
}
