package core

import "testing"

func TestXSAVENames(t *testing.T) {
	for mask, want := range map[uint64]string{
		0:                     "",
		0x7:                   "x87, SSE, AVX",
		0xe0:                  "AVX-512",
		1<<17 | 1<<18 | 1<<20: "AMX, bit 20",
		1 << 5:                "AVX-512",
		1<<2 | 1<<9 | 1<<19:   "AVX, PKRU (protection keys), APX",
	} {
		if got := XSAVENames(mask); got != want {
			t.Errorf("%#x: %q, want %q", mask, got, want)
		}
	}
	x := make([]byte, 576)
	x[512], x[513] = 0xe7, 0x02
	if got := XstateBV(x); got != 0x2e7 {
		t.Errorf("xstate_bv %#x, want 0x2e7", got)
	}
	if got := XstateBV(x[:100]); got != 0 {
		t.Errorf("xstate_bv of a short set %#x", got)
	}
}

// TestMissingInUseOnly: checked as the operator vouched (OnlyInUse), a
// CPU lacking a component the source offered but no thread held takes
// the process; one lacking a held component does not.
func TestMissingInUseOnly(t *testing.T) {
	const sse, avx, avx512 = 0x3, 0x4, 0xe0
	f := &CPUFeatures{XCR0: sse | avx | avx512, InUse: sse | avx}
	if _, offered := f.Missing(sse | avx); offered != avx512 {
		t.Errorf("offered missing %#x, want AVX-512 %#x", offered, avx512)
	}
	f.OnlyInUse = true
	if inUse, offered := f.Missing(sse | avx); inUse != 0 || offered != 0 {
		t.Errorf("in use only: missing %#x/%#x, want none", inUse, offered)
	}
	if inUse, offered := f.Missing(sse); inUse != avx || offered != avx {
		t.Errorf("in use only, no AVX: missing %#x/%#x, want AVX %#x", inUse, offered, avx)
	}
}
