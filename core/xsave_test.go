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
