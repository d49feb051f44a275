package pagestream

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// randomPages returns n pages of pseudo-random bytes, which no codec
// shrinks.
func randomPages(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n*PageSize)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// TestIncompressibleStoredRaw: frames of random pages are stored as they
// are (without a try at compressing them: BenchmarkWriteIncompressible
// shows the cost); frames of heap-like pages, random ones among them, are
// still compressed; both read back whole.
func TestIncompressibleStoredRaw(t *testing.T) {
	for _, c := range []Codec{CodecS2, CodecZstd} {
		random := randomPages(MaxFramePages, 1)
		random[5*PageSize] = 0 // a page not quite random
		clear(random[9*PageSize : 10*PageSize])
		heap := heapLike(MaxFramePages, 2)
		ops := []op{{0, 0x100000, random}, {0, 0x200000, heap}, {round: 0}}
		s, st := writeStream(t, WriterOptions{Codec: c, Workers: 1}, ops)
		if st.RawFrames != 1 {
			t.Errorf("%v: %d frames stored raw, want 1 (the random one)", c, st.RawFrames)
		}
		if st.BytesWire >= uint64(2*MaxFramePages*PageSize) {
			t.Errorf("%v: %d bytes on the wire for a random and a heap-like frame: the heap-like one was not compressed", c, st.BytesWire)
		}
		if _, _, err := readStream(t, s, expect(ops), 2); err != nil {
			t.Fatalf("%v: %v", c, err)
		}
	}
	if incompressible(heapLike(16, 3), make([]byte, 2), 16, 16) {
		t.Error("heap-like pages found incompressible")
	}
	if !incompressible(randomPages(16, 4), make([]byte, 2), 16, 16) {
		t.Error("random pages found compressible")
	}
	bm := []byte{0xff, 0xfe} // only page 8 stored
	src := bytes.Repeat([]byte{'a'}, 16*PageSize)
	copy(src[8*PageSize:], randomPages(1, 5))
	if !incompressible(src, bm, 16, 1) {
		t.Error("the one stored page, random, found compressible")
	}
}

// BenchmarkWriteIncompressible writes 64 MiB of random pages, in 1 MiB
// calls, per codec: the cost of memory no codec shrinks (it is stored as
// it is), in MB/s and CPU ms per GiB.
func BenchmarkWriteIncompressible(b *testing.B) {
	src := randomPages(64<<20/PageSize, 9)
	const chunk = 1 << 20
	for _, c := range []Codec{CodecS2, CodecZstd} {
		b.Run(c.String(), func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			var cpu time.Duration
			for b.Loop() {
				c0 := cpuTime()
				w, err := NewWriter(io.Discard, WriterOptions{Codec: c})
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(src); off += chunk {
					buf := GetBuffer(chunk)
					copy(buf, src[off:off+chunk])
					if err := w.WritePages(0, 0x10000000+uint64(off), buf); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - c0
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N)*float64(1<<30)/float64(len(src)), "cpu-ms/GiB")
		})
	}
}
