package pagestream

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestMultiWriter: calls go to the streams in turn, barriers and the end
// to all; each stream reads on its own, with every round's barrier, and
// together they hold every page once a round, the latest round's last.
func TestMultiWriter(t *testing.T) {
	const streams = 3
	bufs := make([]bytes.Buffer, streams)
	ws := make([]io.Writer, streams)
	for i := range bufs {
		ws[i] = &bufs[i]
	}
	m, err := NewMultiWriter(ws, WriterOptions{Codec: CodecS2, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	heap := heapLike(64, 7)
	page := func(round, i int) []byte {
		p := bytes.Clone(heap[(i%64)*PageSize : (i%64+1)*PageSize])
		p[0], p[1] = byte(round), byte(i)
		return p
	}
	const base = 0x10000000
	want := map[uint64][]byte{}
	for round := range 3 {
		for i := 0; i < 10; i++ {
			if round > 0 && i%2 == 1 {
				continue // not dirty again
			}
			addr := base + uint64(i)*PageSize
			want[addr] = page(round, i)
			if err := m.WritePages(uint32(round), addr, page(round, i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Barrier(uint32(round)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Pages != 10+5+5 {
		t.Errorf("Stats says %d pages, want 20", st.Pages)
	}
	// Apply round by round across the streams, as the target does.
	got := map[uint64][]byte{}
	readers := make([]*Reader, streams)
	for i := range readers {
		if readers[i], err = NewReader(bytes.NewReader(bufs[i].Bytes()), ReaderOptions{}); err != nil {
			t.Fatal(err)
		}
		defer readers[i].Close()
	}
	for round := range 3 {
		for i, r := range readers {
			for {
				f, err := r.Next()
				if err != nil {
					t.Fatalf("stream %d, round %d: %v", i, round, err)
				}
				if f.Kind == FrameBarrier {
					if f.Round != uint32(round) {
						t.Fatalf("stream %d: barrier of round %d, want %d", i, f.Round, round)
					}
					break
				}
				if f.Round != uint32(round) {
					t.Fatalf("stream %d: a page of round %d in round %d", i, f.Round, round)
				}
				for p := range f.Pages {
					got[f.Addr+uint64(p)*PageSize] = bytes.Clone(f.Data[p*PageSize : (p+1)*PageSize])
				}
			}
		}
	}
	for i, r := range readers {
		if _, err := r.Next(); !errors.Is(err, io.EOF) {
			t.Errorf("stream %d after the last barrier: %v, want io.EOF", i, err)
		}
		if bufs[i].Len() == 0 {
			t.Errorf("stream %d is empty", i)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d pages read, want %d", len(got), len(want))
	}
	for a, p := range want {
		if !bytes.Equal(got[a], p) {
			t.Errorf("page at %#x is not the latest round's", a)
		}
	}
	if _, err := NewMultiWriter(nil, WriterOptions{}); err == nil {
		t.Error("a MultiWriter of no streams")
	}
}
