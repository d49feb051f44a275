package pagestream

import (
	"bytes"
	"errors"
	"testing"
)

// countWrites counts the writes a Writer makes.
type countWrites struct {
	bytes.Buffer
	writes int
}

func (c *countWrites) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

// TestWriteRuns: runs of scattered pages from one buffer read back as the
// frames WritePages would have made of each, and a run longer than a
// frame is split.
func TestWriteRuns(t *testing.T) {
	heap := heapLike(600, 7)
	runs := []Run{{Addr: 0x10000, Pages: 1}, {Addr: 0x30000, Pages: 3}, {Addr: 0x100000, Pages: MaxFramePages + 10}, {Addr: 0x7f0000000000, Pages: 2}}
	var ws []want
	var ops []op
	off := 0
	for _, r := range runs {
		n := r.Pages * PageSize
		ops = append(ops, op{round: 1, addr: r.Addr, data: heap[off : off+n]})
		off += n
	}
	ops = append(ops, op{round: 1})
	ws = expect(ops)
	var out countWrites
	w, err := NewWriter(&out, WriterOptions{Codec: CodecS2})
	if err != nil {
		t.Fatal(err)
	}
	data := GetBuffer(off)
	copy(data, heap[:off])
	if err := w.WriteRuns(1, runs, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Barrier(1); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readStream(t, out.Bytes(), ws, 2); err != nil {
		t.Fatal(err)
	}
	// Refused: sizes that do not match, empty runs, bad addresses.
	w2, _ := NewWriter(&bytes.Buffer{}, WriterOptions{Codec: CodecS2})
	defer w2.Abort()
	for name, tc := range map[string]struct {
		runs []Run
		n    int
	}{
		"short data":   {[]Run{{Addr: 0, Pages: 2}}, 1},
		"empty run":    {[]Run{{Addr: 0, Pages: 0}}, 0},
		"no runs":      {nil, 0},
		"unaligned":    {[]Run{{Addr: 100, Pages: 1}}, 1},
		"past the top": {[]Run{{Addr: MaxAddress, Pages: 2}}, 2},
	} {
		if err := w2.WriteRuns(0, tc.runs, make([]byte, tc.n*PageSize)); err == nil {
			t.Errorf("%s: WriteRuns took %v", name, tc.runs)
		} else if name == "unaligned" || name == "past the top" {
			if !errors.Is(err, ErrBadAddress) {
				t.Errorf("%s: %v, want ErrBadAddress", name, err)
			}
		}
	}
}

// TestSmallFramesCoalesced: frames of one page queued one after the other
// reach the underlying writer in far fewer writes than frames (a live
// stream pays a system call and a wake-up per write), and read back whole.
func TestSmallFramesCoalesced(t *testing.T) {
	heap := heapLike(2000, 9)
	var runs []Run
	var ops []op
	for i := range 2000 {
		runs = append(runs, Run{Addr: uint64(i) * 2 * PageSize, Pages: 1})
		ops = append(ops, op{round: 0, addr: uint64(i) * 2 * PageSize, data: heap[i*PageSize : (i+1)*PageSize]})
	}
	ops = append(ops, op{round: 0})
	var out countWrites
	w, err := NewWriter(&out, WriterOptions{Codec: CodecS2, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	for first := 0; first < len(runs); first += 500 {
		data := GetBuffer(500 * PageSize)
		copy(data, heap[first*PageSize:(first+500)*PageSize])
		if err := w.WriteRuns(0, runs[first:first+500], data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Barrier(0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d frames in %d writes", len(runs)+2, out.writes)
	if out.writes > len(runs)/2 {
		t.Errorf("%d frames took %d writes: small frames are not gathered", len(runs)+2, out.writes)
	}
	if _, _, err := readStream(t, out.Bytes(), expect(ops), 2); err != nil {
		t.Fatal(err)
	}
}
