package pagestream

import (
	"fmt"
	"testing"
)

// mixedOps makes a stream with many rounds, barriers, large writes split
// into several frames, single pages, all-zero batches and pages at the top
// of the address space.
func mixedOps() []op {
	var ops []op
	heap := heapLike(3000, 42)
	zero := make([]byte, 5*PageSize)
	at := func(p int) []byte { return heap[p*PageSize : (p+1)*PageSize] }
	for round := uint32(0); round < 12; round++ {
		base := uint64(0x7f0000000000) + uint64(round)*0x1000000
		switch round % 4 {
		case 0:
			ops = append(ops, op{round, base, heap[:1000*PageSize]}) // 4 frames
		case 1:
			for i := range 40 {
				ops = append(ops, op{round, base + uint64(i)*3*PageSize, at(int(round)*40 + i)})
			}
		case 2:
			ops = append(ops, op{round, base, zero}, op{round, base + 0x10000, heap[500*PageSize : 757*PageSize]})
		case 3:
			ops = append(ops, op{round, MaxAddress - 2*PageSize, heap[2000*PageSize : 2002*PageSize]}, op{round, 0, at(7)})
		}
		if round%3 != 2 { // some rounds end without a barrier
			ops = append(ops, op{round: round})
		}
	}
	return ops
}

func TestRoundTrip(t *testing.T) {
	ops := mixedOps()
	ws := expect(ops)
	var pages, zero, storedFrames uint64
	for _, w := range ws {
		stored := false
		for i := 0; i < len(w.data); i += PageSize {
			pages++
			if isZeroPage(w.data[i : i+PageSize]) {
				zero++
			} else {
				stored = true
			}
		}
		if stored {
			storedFrames++
		}
	}
	for _, c := range allCodecs {
		for _, workers := range []int{1, 3} {
			t.Run(fmt.Sprintf("%v/workers=%d", c, workers), func(t *testing.T) {
				stream, ws1 := writeStream(t, WriterOptions{Codec: c, Workers: workers}, ops)
				wantStats := Stats{
					Frames:    uint64(len(ws)) + 1,
					Pages:     pages,
					ZeroPages: zero,
					BytesRaw:  pages * PageSize,
					BytesWire: uint64(len(stream)),
				}
				// Which frames go uncompressed depends on the codec; the
				// reader must count the same.
				wantStats.RawFrames = ws1.RawFrames
				if c == CodecNone && ws1.RawFrames != storedFrames {
					t.Errorf("RawFrames %d, want %d", ws1.RawFrames, storedFrames)
				}
				if ws1 != wantStats {
					t.Errorf("writer stats %+v, want %+v", ws1, wantStats)
				}
				_, r, err := readStream(t, stream, ws, workers)
				if err != nil {
					t.Fatal(err)
				}
				if rs := r.Stats(); rs != wantStats {
					t.Errorf("reader stats %+v, want %+v", rs, wantStats)
				}
				t.Logf("%d bytes raw, %d on the wire", wantStats.BytesRaw, len(stream))
			})
		}
	}
}

func TestRoundTripLevels(t *testing.T) {
	heap := heapLike(300, 7)
	ops := []op{{1, 0x400000, heap}, {round: 1}}
	for _, c := range []Codec{CodecZstd, CodecS2} {
		for l := 0; l <= maxLevel(c); l++ {
			stream, _ := writeStream(t, WriterOptions{Codec: c, Level: l, Workers: 2}, ops)
			if _, _, err := readStream(t, stream, expect(ops), 2); err != nil {
				t.Fatalf("%v level %d: %v", c, l, err)
			}
		}
	}
	if _, err := NewWriter(nil, WriterOptions{Codec: CodecS2, Level: 4}); err == nil {
		t.Error("s2 level 4 accepted")
	}
}

func TestEmptyStream(t *testing.T) {
	stream, st := writeStream(t, WriterOptions{Codec: CodecS2}, nil)
	if st.Frames != 1 || st.BytesWire != uint64(len(stream)) || len(stream) != streamHeaderSize+frameHeaderSize+endPayloadSize+trailerSize {
		t.Errorf("stats %+v, stream %d bytes", st, len(stream))
	}
	if _, _, err := readStream(t, stream, nil, 1); err != nil {
		t.Fatal(err)
	}
}

// TestAdaptive checks that a stream whose frames are partly stored
// uncompressed, by timing, reads back right, with the same count of raw
// frames on both sides.
func TestAdaptive(t *testing.T) {
	heap := heapLike(2048, 9)
	var ops []op
	for i := range 8 {
		ops = append(ops, op{uint32(i), uint64(i) << 32, heap})
	}
	for _, c := range []Codec{CodecZstd, CodecS2} {
		stream, ws := writeStream(t, WriterOptions{Codec: c, Workers: 1, Adaptive: true}, ops)
		_, r, err := readStream(t, stream, expect(ops), 2)
		if err != nil {
			t.Fatal(err)
		}
		if rs := r.Stats(); rs != ws {
			t.Errorf("%v: reader stats %+v, writer %+v", c, rs, ws)
		}
		t.Logf("%v: %d of %d frames raw, ratio %.3f", c, ws.RawFrames, ws.Frames, float64(ws.BytesWire)/float64(ws.BytesRaw))
	}
}
