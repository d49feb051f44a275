package core

import "testing"

func TestPageSet(t *testing.T) {
	var s PageSet
	if s.Has(0x1000) || s.Count(0, 1<<40) != 0 {
		t.Fatal("empty set not empty")
	}
	s.Add(0x1000)
	s.AddRange(0x7fff_0000_0000, 0x7fff_0000_0000+300*4096) // crosses no chunk
	s.AddRange(1<<30-2*4096, 1<<30+2*4096)                  // crosses a chunk boundary
	if !s.Has(0x1000) || s.Has(0x2000) || !s.Has(1<<30) || !s.Has(1<<30-4096) {
		t.Fatal("membership wrong")
	}
	if got := s.Count(0, 1<<47); got != 1+300+4 {
		t.Fatalf("Count = %d, want 305", got)
	}
	if got := s.Count(0x7fff_0000_0000+4096, 0x7fff_0000_0000+200*4096); got != 199 {
		t.Fatalf("partial Count = %d, want 199", got)
	}
	if got := s.Count(1<<30, 1<<30+4096); got != 1 {
		t.Fatalf("single Count = %d, want 1", got)
	}
}
