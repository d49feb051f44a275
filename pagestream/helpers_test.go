package pagestream

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"
)

// rng is xorshift64*: small, fast and deterministic.
type rng uint64

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	*r = rng(x)
	return x * 2685821657736338717
}

var words = []string{
	"the", "of", "pointer", "malloc", "free", "struct", "node", "next", "prev",
	"value", "key", "hash", "table", "bucket", "string", "len", "cap", "data",
	"request", "response", "header", "content-type", "application/json",
	"user_id", "session", "token", "2024-01-01T00:00:00Z", "GET", "POST", "/api/v1/items",
	"error", "nil", "true", "false", "0x7ffd", "utf-8", "{\"id\":", "},", "\n", "    ",
}

// heapLike returns pages of deterministic "heap-like" data: about 30% of the
// pages are all zeros; the others are made of 512-byte pieces, each either
// random bytes or text-like bytes (words from a small vocabulary), half and
// half on average.
func heapLike(pages int, seed uint64) []byte {
	r := rng(seed | 1)
	b := make([]byte, pages*PageSize)
	for p := range pages {
		page := b[p*PageSize : (p+1)*PageSize]
		if r.next()%10 < 3 {
			continue
		}
		for s := 0; s < PageSize; s += 512 {
			seg := page[s : s+512]
			if r.next()&1 == 0 {
				for i := 0; i < len(seg); i += 8 {
					v := r.next()
					for k := 0; k < 8; k++ {
						seg[i+k] = byte(v >> (8 * k))
					}
				}
				continue
			}
			for i := 0; i < len(seg); {
				v := r.next()
				i += copy(seg[i:], words[v%uint64(len(words))])
				if i < len(seg) {
					seg[i] = ' '
					i++
				}
			}
		}
	}
	return b
}

var allCodecs = []Codec{CodecNone, CodecZstd, CodecS2}

// op is one call on a Writer: pages (data != nil) or a barrier.
type op struct {
	round uint32
	addr  uint64
	data  []byte
}

// want is a frame the reader should return.
type want struct {
	kind  FrameKind
	round uint32
	addr  uint64
	data  []byte
}

// expect splits ops into the frames a reader should see.
func expect(ops []op) []want {
	var ws []want
	for _, o := range ops {
		if o.data == nil {
			ws = append(ws, want{kind: FrameBarrier, round: o.round})
			continue
		}
		for off := 0; off < len(o.data); off += MaxFramePages * PageSize {
			end := min(off+MaxFramePages*PageSize, len(o.data))
			ws = append(ws, want{kind: FramePages, round: o.round, addr: o.addr + uint64(off), data: o.data[off:end]})
		}
	}
	return ws
}

// writeStream writes ops with a Writer (giving it copies of the data) and
// returns the stream and the Writer's stats.
func writeStream(t testing.TB, opts WriterOptions, ops []op) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		if o.data == nil {
			err = w.Barrier(o.round)
		} else {
			d := GetBuffer(len(o.data))
			copy(d, o.data)
			err = w.WritePages(o.round, o.addr, d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), w.Stats()
}

// readStream reads a stream to its end and checks each frame against ws as
// it comes. It returns the number of frames read and the error that ended
// the stream (nil for io.EOF). A frame that differs from ws fails the test:
// whatever the stream, the reader must never return wrong data.
func readStream(t testing.TB, stream []byte, ws []want, workers int) (int, *Reader, error) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(stream), ReaderOptions{Workers: workers})
	if err != nil {
		return 0, nil, err
	}
	defer r.Close()
	n := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			if n != len(ws) {
				t.Fatalf("EOF after %d frames, want %d", n, len(ws))
			}
			return n, r, nil
		}
		if err != nil {
			return n, r, err
		}
		if n >= len(ws) {
			t.Fatalf("frame %d: more frames than written", n)
		}
		checkFrame(t, f, ws[n], n)
		n++
	}
}

func checkFrame(t testing.TB, f *Frame, w want, n int) {
	t.Helper()
	if f.Kind != w.kind || f.Round != w.round || f.Seq != uint64(n) {
		t.Fatalf("frame %d: got %v round %d seq %d, want %v round %d", n, f.Kind, f.Round, f.Seq, w.kind, w.round)
	}
	if f.Kind == FrameBarrier {
		if f.Data != nil || f.Pages != 0 {
			t.Fatalf("frame %d: barrier with data", n)
		}
		return
	}
	if f.Addr != w.addr || f.Pages != len(w.data)/PageSize || !bytes.Equal(f.Data, w.data) {
		t.Fatalf("frame %d: got %d pages at %#x, want %d at %#x (data equal %v)",
			n, f.Pages, f.Addr, len(w.data)/PageSize, w.addr, bytes.Equal(f.Data, w.data))
	}
	for i := range f.Pages {
		if got, want := f.IsZero(i), isZeroPage(w.data[i*PageSize:(i+1)*PageSize]); got != want {
			t.Fatalf("frame %d page %d: IsZero %v, want %v", n, i, got, want)
		}
	}
}

// checkSentinel fails unless err is a *FrameError wrapping one of the
// sentinels.
func checkSentinel(t testing.TB, err error, what string) {
	t.Helper()
	var fe *FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("%s: error %v (%T) is not a *FrameError", what, err, err)
	}
	for _, s := range []error{ErrBadMagic, ErrBadVersion, ErrBadHeader, ErrChecksum, ErrTruncated,
		ErrFrameTooLarge, ErrOutOfOrder, ErrSequence, ErrUnknownFrame, ErrUnknownCodec,
		ErrMalformed, ErrCorrupt, ErrBadAddress, ErrTotals} {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("%s: error %v wraps no sentinel", what, err)
}

// waitGoroutines waits until no more than n goroutines run.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(time.Millisecond)
	}
}
