package pagestream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"
)

var errFail = errors.New("disk on fire")

// failWriter takes n bytes, then fails.
type failWriter struct {
	n   int
	buf bytes.Buffer
}

func (f *failWriter) Write(p []byte) (int, error) {
	if room := f.n - f.buf.Len(); len(p) > room {
		f.buf.Write(p[:room])
		return room, errFail
	}
	return f.buf.Write(p)
}

// within fails the test if fn does not return within d (a deadlock).
func within(t *testing.T, d time.Duration, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		t.Fatalf("deadlock? still running after %v:\n%s", d, buf[:runtime.Stack(buf, true)])
	}
}

func TestWriterErrorPropagation(t *testing.T) {
	heap := heapLike(64, 11)
	const calls = 400
	for _, limit := range []int{0, 10, 31, 32, 100, 5000, 300000, 2 << 20, 20 << 20} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			base := runtime.NumGoroutine()
			fw := &failWriter{n: limit}
			var w *Writer
			var writeErr, closeErr error
			within(t, 30*time.Second, func() {
				var err error
				w, err = NewWriter(fw, WriterOptions{Codec: CodecS2, Workers: 2})
				if limit < streamHeaderSize {
					if !errors.Is(err, errFail) {
						t.Errorf("NewWriter: %v, want errFail", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				for i := range calls {
					buf := GetBuffer(len(heap))
					copy(buf, heap)
					if writeErr = w.WritePages(uint32(i/10), uint64(i)<<20, buf); writeErr != nil {
						break
					}
				}
				closeErr = w.Close()
			})
			waitGoroutines(t, base)
			if w == nil {
				return
			}
			if !errors.Is(closeErr, errFail) {
				t.Errorf("Close: %v, want errFail", closeErr)
			}
			if limit <= 2<<20 && !errors.Is(writeErr, errFail) {
				t.Errorf("WritePages never failed (last: %v)", writeErr)
			}
			if err := w.WritePages(1000, 0, make([]byte, PageSize)); !errors.Is(err, ErrClosed) {
				t.Errorf("WritePages after Close: %v", err)
			}
			if err := w.Close(); err != closeErr {
				t.Errorf("second Close: %v, want %v", err, closeErr)
			}
			if st := w.Stats(); st.BytesWire != uint64(limit) {
				t.Errorf("BytesWire %d, want %d", st.BytesWire, limit)
			}
			// What did get written reads as a good beginning, then truncated.
			var ops []op
			for i := range calls {
				ops = append(ops, op{uint32(i / 10), uint64(i) << 20, heap})
			}
			if _, _, err := readStream(t, fw.buf.Bytes(), expect(ops), 2); !errors.Is(err, ErrTruncated) {
				t.Errorf("reading what was written: %v, want ErrTruncated", err)
			}
		})
	}
}

func TestWriterAbort(t *testing.T) {
	base := runtime.NumGoroutine()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, WriterOptions{Codec: CodecS2, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	ops := smallOps()
	for _, o := range ops {
		if o.data == nil {
			err = w.Barrier(o.round)
		} else {
			err = w.WritePages(o.round, o.addr, bytes.Clone(o.data))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	waitGoroutines(t, base)
	if err := w.Close(); !errors.Is(err, ErrAborted) {
		t.Errorf("Close after Abort: %v", err)
	}
	n, _, err := readStream(t, buf.Bytes(), expect(ops), 1)
	if !errors.Is(err, ErrTruncated) || n != len(expect(ops)) {
		t.Errorf("aborted stream: %d frames, %v; want all frames, then ErrTruncated", n, err)
	}
}

func TestWriterMisuse(t *testing.T) {
	w, err := NewWriter(io.Discard, WriterOptions{Codec: CodecS2, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	page := func() []byte { return make([]byte, PageSize) }
	for _, tt := range []struct {
		name string
		err  error
		want error
	}{
		{"empty", w.WritePages(1, 0, nil), nil},
		{"short", w.WritePages(1, 0, make([]byte, 100)), nil},
		{"unaligned", w.WritePages(1, 100, page()), ErrBadAddress},
		{"past 2^47", w.WritePages(1, MaxAddress-PageSize, make([]byte, 2*PageSize)), ErrBadAddress},
		{"wraps", w.WritePages(1, 1<<64-PageSize, page()), ErrBadAddress},
		{"ok", w.WritePages(5, 0, page()), nil},
		{"round down", w.WritePages(4, 0, page()), ErrOutOfOrder},
		{"barrier down", w.Barrier(4), ErrOutOfOrder},
		{"barrier", w.Barrier(5), nil},
		{"closed round", w.WritePages(5, 0, page()), ErrOutOfOrder},
		{"closed barrier", w.Barrier(5), ErrOutOfOrder},
		{"next round", w.WritePages(6, 0, page()), nil},
	} {
		switch {
		case tt.name == "ok" || tt.name == "barrier" || tt.name == "next round":
			if tt.err != nil {
				t.Errorf("%s: %v", tt.name, tt.err)
			}
		case tt.err == nil:
			t.Errorf("%s: no error", tt.name)
		case tt.want != nil && !errors.Is(tt.err, tt.want):
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Barrier(7); !errors.Is(err, ErrClosed) {
		t.Errorf("Barrier after Close: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close: %v", err)
	}
	for _, opts := range []WriterOptions{{Codec: 3}, {Codec: CodecS2, Workers: -1}, {Codec: CodecZstd, Level: 23}, {Codec: CodecNone, Level: 1}} {
		if _, err := NewWriter(io.Discard, opts); err == nil {
			t.Errorf("NewWriter(%+v) accepted", opts)
		}
	}
}

// TestFlushPipe checks, over a pipe, that after Barrier and Flush the other
// side gets the round's frames without waiting for more of the stream.
func TestFlushPipe(t *testing.T) {
	pr, pw := io.Pipe()
	type got struct {
		kind  FrameKind
		round uint32
		err   error
	}
	frames := make(chan got, 10)
	go func() {
		defer close(frames)
		r, err := NewReader(pr, ReaderOptions{Workers: 2})
		if err != nil {
			frames <- got{err: err}
			return
		}
		defer r.Close()
		for {
			f, err := r.Next()
			if err != nil {
				frames <- got{err: err}
				return
			}
			frames <- got{kind: f.Kind, round: f.Round}
		}
	}()
	w, err := NewWriter(pw, WriterOptions{Codec: CodecZstd, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	next := func() got {
		select {
		case g := <-frames:
			return g
		case <-time.After(10 * time.Second):
			t.Fatal("no frame from the reader")
		}
		return got{}
	}
	for round := uint32(1); round <= 3; round++ {
		if err := w.WritePages(round, 0x1000, bytes.Clone(compressible)); err != nil {
			t.Fatal(err)
		}
		if err := w.Barrier(round); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if g := next(); g.kind != FramePages || g.round != round {
			t.Fatalf("got %+v, want pages of round %d", g, round)
		}
		if g := next(); g.kind != FrameBarrier || g.round != round {
			t.Fatalf("got %+v, want barrier of round %d", g, round)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if g := next(); g.err != io.EOF {
		t.Fatalf("got %+v, want EOF", g)
	}
	pw.Close()
}

func TestReaderCloseEarly(t *testing.T) {
	stream, _ := writeStream(t, WriterOptions{Codec: CodecS2}, mixedOps())
	base := runtime.NumGoroutine()
	for _, reads := range []int{0, 1, 5} {
		r, err := NewReader(bytes.NewReader(stream), ReaderOptions{Workers: 3})
		if err != nil {
			t.Fatal(err)
		}
		for range reads {
			if _, err := r.Next(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(10 * time.Millisecond) // let the pipeline fill up
		r.Close()
		waitGoroutines(t, base)
		if _, err := r.Next(); !errors.Is(err, ErrClosed) {
			t.Errorf("Next after Close: %v", err)
		}
	}
}

// TestReaderStopsAfterError checks that the goroutines stop by themselves
// when the stream turns out bad, without Close.
func TestReaderStopsAfterError(t *testing.T) {
	stream, _ := writeStream(t, WriterOptions{Codec: CodecS2}, mixedOps())
	offs := frameStarts(t, stream)
	bad := bytes.Clone(stream)
	bad[offs[3]+frameHeaderSize+10] ^= 1
	base := runtime.NumGoroutine()
	r, err := NewReader(bytes.NewReader(bad), ReaderOptions{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := r.Next()
		if err != nil {
			if !errors.Is(err, ErrChecksum) {
				t.Fatal(err)
			}
			break
		}
	}
	waitGoroutines(t, base)
	r.Close()
}

func TestKeep(t *testing.T) {
	ops := mixedOps()
	ws := expect(ops)
	stream, _ := writeStream(t, WriterOptions{Codec: CodecS2}, ops)
	r, err := NewReader(bytes.NewReader(stream), ReaderOptions{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	var kept [][]byte
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Kind == FramePages {
			f.Keep()
		}
		kept = append(kept, f.Data)
	}
	r.Close()
	for i, w := range ws {
		if !bytes.Equal(kept[i], w.data) {
			t.Fatalf("kept frame %d changed", i)
		}
	}
	for _, b := range kept {
		if b != nil {
			PutBuffer(b)
		}
	}
}

// TestStatsWhileWriting reads Stats from another goroutine (run with -race).
func TestStatsWhileWriting(t *testing.T) {
	w, err := NewWriter(io.Discard, WriterOptions{Codec: CodecS2, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	heap := heapLike(300, 5)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		var last uint64
		for {
			select {
			case <-stop:
				return
			default:
			}
			if s := w.Stats(); s.BytesWire < last {
				t.Error("BytesWire went down")
				return
			} else {
				last = s.BytesWire
			}
		}
	})
	for i := range 20 {
		if err := w.WritePages(0, uint64(i)<<30, bytes.Clone(heap)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if s := w.Stats(); s.Pages != 20*300 || s.BytesRaw != 20*300*PageSize {
		t.Errorf("stats %+v", s)
	}
}

func TestParseCodec(t *testing.T) {
	for _, c := range allCodecs {
		got, err := ParseCodec(c.String())
		if err != nil || got != c {
			t.Errorf("ParseCodec(%q) = %v, %v", c.String(), got, err)
		}
	}
	if c, err := ParseCodec(""); err != nil || c != DefaultCodec {
		t.Errorf("ParseCodec(\"\") = %v, %v", c, err)
	}
	if _, err := ParseCodec("lz4"); !errors.Is(err, ErrUnknownCodec) {
		t.Errorf("ParseCodec(lz4): %v", err)
	}
}

func TestBuffers(t *testing.T) {
	for pages := 1; pages <= maxPooledPages; pages++ {
		c, size := classUp(pages)
		if size < pages || c < 0 || c >= numBufClasses || classDown(size) != c {
			t.Fatalf("classUp(%d) = %d, %d; classDown(%d) = %d", pages, c, size, size, classDown(size))
		}
		if d := classDown(pages); d > c || (d == c) != (size == pages) {
			t.Fatalf("classDown(%d) = %d, classUp = %d, %d", pages, d, c, size)
		}
	}
	for _, n := range []int{PageSize, 3 * PageSize, 1 << 20, 5 << 20} {
		b := GetBuffer(n)
		if len(b) != n {
			t.Fatalf("GetBuffer(%d): len %d", n, len(b))
		}
		PutBuffer(b)
	}
	defer func() {
		if recover() == nil {
			t.Error("GetBuffer(100) did not panic")
		}
	}()
	GetBuffer(100)
}
