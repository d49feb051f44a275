package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// ownImage is this test process's vdso, as mapped.
func ownImage(t testing.TB) (uint64, []byte) {
	at, img, err := ownVDSO()
	if err != nil {
		t.Skipf("no vdso to parse: %v", err)
	}
	return at, img
}

func TestVDSOFuncs(t *testing.T) {
	_, img := ownImage(t)
	funcs, err := vdsoFuncs(img)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]uint64{}
	for _, f := range funcs {
		names[f.Name] = f.Off
	}
	for _, want := range []string{"__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time", "__vdso_getcpu", "__vdso_clock_getres"} {
		off, ok := names[want]
		if !ok {
			t.Fatalf("%s not among the vdso's functions %v", want, funcs)
		}
		// A function starts with code: endbr64 or a push or a mov, not
		// zeros of the headers.
		if off < 64 || bytes.Equal(img[off:off+4], make([]byte, 4)) {
			t.Errorf("%s at +%#x: %x", want, off, img[off:off+4])
		}
	}
	if names["clock_gettime"] != names["__vdso_clock_gettime"] {
		t.Errorf("clock_gettime at +%#x, __vdso_clock_gettime at +%#x", names["clock_gettime"], names["__vdso_clock_gettime"])
	}
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
	funcs, err := vdsoFuncs(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []uint64{here - 0x100000, here - 1<<40} {
		p, err := buildProxy(img, at, img, here)
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
	p, err := buildProxy(img, here-0x100000, cur, here)
	if err != nil {
		t.Fatal(err)
	}
	funcs, _ := vdsoFuncs(img)
	for _, f := range funcs {
		if vdsoBase(f.Name) == "getcpu" {
			if _, nr := jumpTarget(t, p, here-0x100000, f.Off); nr != 309 {
				t.Errorf("%s: system call %d, want 309", f.Name, nr)
			}
		}
	}
	// An old vdso with a function that returns an error where this
	// kernel lacks it (as __vdso_sgx_enter_enclave: getcpX stands for it).
	vdsoErrors["getcpX"] = 14
	defer delete(vdsoErrors, "getcpX")
	old := bytes.ReplaceAll(img, []byte("getcpu\x00"), []byte("getcpX\x00"))
	if p, err = buildProxy(old, here-0x100000, img, here); err != nil {
		t.Fatal(err)
	}
	funcs, _ = vdsoFuncs(old)
	for _, f := range funcs {
		if vdsoBase(f.Name) == "getcpX" {
			if want := errnoCode(14); !bytes.Equal(p[f.Off:f.Off+uint64(len(want))], want) {
				t.Errorf("%s: % x, want mov rax, -14; ret", f.Name, p[f.Off:f.Off+uint64(len(want))])
			}
		}
	}
	// An old vdso with a function no kernel has.
	old = bytes.ReplaceAll(img, []byte("__vdso_time\x00"), []byte("__vdso_tXme\x00"))
	_, err = buildProxy(old, here-0x100000, img, here)
	var ue *UnservedError
	if !errors.As(err, &ue) || !slices.Contains(ue.Names, "__vdso_tXme") {
		t.Fatalf("got %v, want an UnservedError naming __vdso_tXme", err)
	}
}

func FuzzVDSOFuncs(f *testing.F) {
	if _, img, err := ownVDSO(); err == nil {
		f.Add(img)
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		funcs, err := vdsoFuncs(b)
		if err != nil {
			return
		}
		for _, fn := range funcs {
			if fn.Off >= uint64(len(b)) {
				t.Fatalf("%s at +%#x of %d bytes", fn.Name, fn.Off, len(b))
			}
		}
		buildProxy(b, 1<<40, b, 1<<20)
	})
}
