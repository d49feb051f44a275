package raw

import "testing"

func TestXCR0(t *testing.T) {
	x, ok := XCR0()
	if !ok {
		t.Skip("no OSXSAVE: the kernel does not use XSAVE")
	}
	// x87 and SSE state are always enabled on x86-64.
	if x&3 != 3 {
		t.Errorf("XCR0 %#x lacks x87 or SSE", x)
	}
	t.Logf("XCR0 %#x", x)
}
