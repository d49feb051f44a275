package pagestream

import (
	"math/rand/v2"
	"testing"
)

// TestCRCCombine: crcCombine gives what crcUpdate computes over the data.
func TestCRCCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, pages := range []int{0, 1, 2, 3, 7, 64, 200, MaxFramePages} {
		b := randomPages(pages, uint64(pages))
		for range 3 {
			c := r.Uint32()
			if got, want := crcCombine(c, crc32c(b), len(b)), crcUpdate(c, b); got != want {
				t.Fatalf("%d pages from %08x: combined %08x, computed %08x", pages, c, got, want)
			}
		}
	}
}
