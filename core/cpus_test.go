package core

import (
	"slices"
	"testing"
)

func TestCPUList(t *testing.T) {
	for _, c := range []struct {
		s    string
		mask []uint64
	}{
		{"0", []uint64{1}},
		{"0-1", []uint64{3}},
		{"1,3-5,64", []uint64{0b111010, 1}},
		{"63-65", []uint64{1 << 63, 3}},
	} {
		m, err := ParseCPUList(c.s)
		if err != nil || !slices.Equal(m, c.mask) {
			t.Errorf("ParseCPUList(%q) = %x, %v; want %x", c.s, m, err, c.mask)
		}
		if got := CPUList(c.mask); got != c.s {
			t.Errorf("CPUList(%x) = %q, want %q", c.mask, got, c.s)
		}
	}
	for _, bad := range []string{"", "-1", "3-1", "1024", "a", "0,,1", "0-"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("ParseCPUList(%q) accepted", bad)
		}
	}
}

// FuzzParseCPUList: whatever /sys holds, ParseCPUList does not panic, and
// what it accepts formats back to a list that parses to the same mask.
func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0", "0-1", "1,3-5,64", "0-1023", "5-2", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseCPUList(s)
		if err != nil {
			return
		}
		if len(m) > MaxCPUs/64 {
			t.Fatalf("%q: mask of %d words", s, len(m))
		}
		back, err := ParseCPUList(CPUList(m))
		if err != nil || !slices.Equal(back, m) {
			t.Fatalf("%q: %x formats as %q, parses back as %x, %v", s, m, CPUList(m), back, err)
		}
	})
}
