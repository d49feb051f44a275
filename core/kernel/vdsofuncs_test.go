package kernel

import (
	"bytes"
	"testing"
)

// ownImage is this test process's vdso, as mapped.
func ownImage(t testing.TB) (uint64, []byte) {
	at, img, err := OwnVDSO()
	if err != nil {
		t.Skipf("no vdso to parse: %v", err)
	}
	return at, img
}

func TestVDSOFuncs(t *testing.T) {
	_, img := ownImage(t)
	funcs, err := VDSOFuncs(img)
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

func FuzzVDSOFuncs(f *testing.F) {
	if _, img, err := OwnVDSO(); err == nil {
		f.Add(img)
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		funcs, err := VDSOFuncs(b)
		if err != nil {
			return
		}
		for _, fn := range funcs {
			if fn.Off >= uint64(len(b)) {
				t.Fatalf("%s at +%#x of %d bytes", fn.Name, fn.Off, len(b))
			}
		}
	})
}

// A damaged image is refused, whatever it announces: more program or
// section headers than it holds, a section beyond its end, a symbol
// outside it.
func TestVDSOFuncsDamaged(t *testing.T) {
	_, img := ownImage(t)
	for _, tc := range []struct {
		name string
		edit func(b []byte)
	}{
		{"62k program headers", func(b []byte) { b[0x39] = 0xf3 }},
		{"section headers beyond the end", func(b []byte) { b[0x2d] = 0x10 }},
		{"truncated", nil},
		{"32-bit", func(b []byte) { b[4] = 1 }},
	} {
		b := bytes.Clone(img)
		if tc.edit != nil {
			tc.edit(b)
		} else {
			b = b[:len(b)/2]
		}
		if funcs, err := VDSOFuncs(b); err == nil {
			t.Errorf("%s: %d functions, want an error", tc.name, len(funcs))
		}
	}
}
