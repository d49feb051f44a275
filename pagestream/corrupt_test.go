package pagestream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// smallOps is a short stream with every kind of frame: pages with and
// without zero pages, a single page, an all-zero batch, barriers.
func smallOps() []op {
	heap := heapLike(8, 3)
	three := append(append(append([]byte{}, heap[:PageSize]...), make([]byte, PageSize)...), heap[2*PageSize:3*PageSize]...)
	if !isZeroPage(three[PageSize : 2*PageSize]) {
		panic("middle page not zero")
	}
	return []op{
		{0, 0x10000, three},
		{0, 0x20000, heap[4*PageSize : 5*PageSize]},
		{round: 0},
		{2, 0x30000, make([]byte, 2*PageSize)},
		{2, 0x7fff0000, heap[5*PageSize : 8*PageSize]},
		{round: 2},
	}
}

// frameStarts returns the offsets of the frames of a valid stream, and its
// length at the end.
func frameStarts(t testing.TB, stream []byte) []int64 {
	t.Helper()
	var offs []int64
	off := int64(streamHeaderSize)
	for off < int64(len(stream)) {
		offs = append(offs, off)
		h, fe := parseFrameHeader(stream[off:off+frameHeaderSize], off)
		if fe != nil {
			t.Fatal(fe)
		}
		off += frameHeaderSize + int64(h.payloadLen) + trailerSize
	}
	return append(offs, off)
}

// frameAt returns the offset of the frame holding byte pos (0 for the
// stream header).
func frameAt(offs []int64, pos int64) int64 {
	start := int64(0)
	for _, o := range offs {
		if o > pos {
			break
		}
		start = o
	}
	return start
}

// TestCorruptEveryByte changes every byte of small streams, one at a time,
// and expects an error that names the frame holding the byte, after only
// correct frames.
func TestCorruptEveryByte(t *testing.T) {
	ops := smallOps()
	ws := expect(ops)
	for _, c := range allCodecs {
		t.Run(c.String(), func(t *testing.T) {
			stream, _ := writeStream(t, WriterOptions{Codec: c, Workers: 2, StreamID: 99}, ops)
			offs := frameStarts(t, stream)
			bad := make([]byte, len(stream))
			for pos := range stream {
				// Header and trailer bytes get three kinds of change,
				// payload bytes (mostly page data) one.
				xs := []byte{0x01, 0x80, 0xff}
				if start := frameAt(offs, int64(pos)); start > 0 && int64(pos) >= start+frameHeaderSize+MaxFramePages/8+contentCRCSize &&
					pos < len(stream)-trailerSize && frameAt(offs, int64(pos+trailerSize)) == start {
					xs = xs[:1]
				}
				for _, x := range xs {
					copy(bad, stream)
					bad[pos] ^= x
					what := fmt.Sprintf("byte %d ^ %#x", pos, x)
					_, _, err := readStream(t, bad, ws, 2)
					if err == nil {
						t.Fatalf("%s: stream read without error", what)
					}
					checkSentinel(t, err, what)
					var fe *FrameError
					errors.As(err, &fe)
					if want := frameAt(offs, int64(pos)); fe.Offset != want {
						t.Fatalf("%s: error at offset %d, want %d: %v", what, fe.Offset, want, err)
					}
				}
			}
			t.Logf("%d bytes, %d frames", len(stream), len(offs)-1)
		})
	}
}

// TestCorruptRandom puts random bytes at random places of a larger stream.
func TestCorruptRandom(t *testing.T) {
	ops := mixedOps()
	ws := expect(ops)
	r := rng(77)
	for _, c := range allCodecs {
		stream, _ := writeStream(t, WriterOptions{Codec: c, Workers: 2}, ops)
		bad := make([]byte, len(stream))
		for trial := range 300 {
			copy(bad, stream)
			n := 1 + int(r.next()%4)
			for range n {
				pos := r.next() % uint64(len(bad))
				bad[pos] ^= byte(1 + r.next()%255)
			}
			_, _, err := readStream(t, bad, ws, 2)
			if err == nil {
				t.Fatalf("%v trial %d: corrupt stream read without error", c, trial)
			}
			checkSentinel(t, err, fmt.Sprintf("%v trial %d", c, trial))
		}
	}
}

// TestTruncateEveryLength cuts a stream at every length.
func TestTruncateEveryLength(t *testing.T) {
	ops := smallOps()
	ws := expect(ops)
	for _, c := range allCodecs {
		stream, _ := writeStream(t, WriterOptions{Codec: c, Workers: 2}, ops)
		for n := range len(stream) {
			_, _, err := readStream(t, stream[:n], ws, 1)
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("%v cut at %d of %d: got %v, want ErrTruncated", c, n, len(stream), err)
			}
			checkSentinel(t, err, "truncated")
		}
	}
}

// crafter builds streams by hand, with valid checksums, to test the checks
// behind them.
type crafter struct {
	b     []byte
	chain uint32
	seq   uint64
}

func newCrafter(id uint64) *crafter {
	b := streamHeader{streamID: id}.appendTo(nil)
	return &crafter{b: b, chain: binary.LittleEndian.Uint32(b[streamHeaderSize-4:])}
}

// frame appends a frame with h's fields (seq and payload length filled in
// unless set) and payload.
func (c *crafter) frame(h frameHeader, payload []byte) *crafter {
	if h.seq == 0 {
		h.seq = c.seq
	}
	c.seq = h.seq + 1
	if h.payloadLen == 0 {
		h.payloadLen = uint32(len(payload))
	}
	start := len(c.b)
	c.b = append(c.b, make([]byte, frameHeaderSize)...)
	h.put(c.b[start:])
	c.b = append(c.b, payload...)
	crc := crcUpdate(c.chain, c.b[start:])
	c.b = binary.LittleEndian.AppendUint32(c.b, crc)
	c.chain = crc
	return c
}

// pages appends a page frame holding data (compressed with codec), with
// zero pages detected.
func (c *crafter) pages(round uint32, addr uint64, codec Codec, data []byte) *crafter {
	n := len(data) / PageSize
	bm := make([]byte, bitmapLen(n))
	var raw []byte
	for i := range n {
		p := data[i*PageSize : (i+1)*PageSize]
		if isZeroPage(p) {
			bm[i/8] |= 1 << (i % 8)
		} else {
			raw = append(raw, p...)
		}
	}
	payload := binary.LittleEndian.AppendUint32(bm, crc32c(raw))
	switch codec {
	case CodecNone:
		payload = append(payload, raw...)
	case CodecS2:
		payload = append(payload, s2.Encode(nil, raw)...)
	case CodecZstd:
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithSingleSegment(true))
		payload = e.EncodeAll(raw, payload)
	}
	return c.frame(frameHeader{kind: FramePages, codec: codec, round: round, addr: addr, pages: uint32(n), stored: uint32(len(raw) / PageSize)}, payload)
}

func (c *crafter) barrier(round uint32) *crafter {
	return c.frame(frameHeader{kind: FrameBarrier, round: round}, nil)
}

func (c *crafter) end(t endTotals) *crafter {
	return c.frame(frameHeader{kind: FrameEnd}, t.appendTo(nil))
}

// readErrOf reads stream to its end and returns the error (nil for EOF).
func readErrOf(stream []byte) error {
	r, err := NewReader(bytes.NewReader(stream), ReaderOptions{Workers: 2})
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		_, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// compressible is one page that compresses well.
var compressible = bytes.Repeat([]byte("compressible page "), PageSize/18+1)[:PageSize]

func TestCraftedStreams(t *testing.T) {
	page := compressible
	s2page := append(binary.LittleEndian.AppendUint32(make([]byte, 1), crc32c(page)), s2.Encode(nil, page)...)
	zenc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithSingleSegment(true))
	twoPages := append(append([]byte{}, page...), page...)
	zstdTwo := zenc.EncodeAll(twoPages, nil)
	hdr := func(h frameHeader) frameHeader { return h }
	one := func(codec Codec, stored uint32) frameHeader {
		return frameHeader{kind: FramePages, codec: codec, round: 1, addr: 0x1000, pages: 1, stored: stored}
	}
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"valid", newCrafter(1).pages(1, 0x1000, CodecS2, page).barrier(1).end(endTotals{2, 1, 0}).b, nil},
		{"valid zstd", newCrafter(1).pages(1, 0x1000, CodecZstd, twoPages).end(endTotals{1, 2, 0}).b, nil},
		{"valid all zero", newCrafter(1).pages(1, 0x1000, CodecNone, make([]byte, 9*PageSize)).end(endTotals{1, 9, 9}).b, nil},
		{"no end frame", newCrafter(1).pages(1, 0x1000, CodecS2, page).b, ErrTruncated},
		{"empty", nil, ErrTruncated},
		{"bad magic", append([]byte("MIGPAGEZ"), newCrafter(1).b[8:]...), ErrBadMagic},
		{"bad version", func() []byte {
			b := newCrafter(1).b
			b[8] = 2
			return b
		}(), ErrBadVersion},
		{"stream header checksum", func() []byte {
			b := newCrafter(1).b
			b[20] ^= 1
			return b
		}(), ErrChecksum},
		{"totals frames", newCrafter(1).pages(1, 0x1000, CodecS2, page).end(endTotals{2, 1, 0}).b, ErrTotals},
		{"totals pages", newCrafter(1).pages(1, 0x1000, CodecS2, page).end(endTotals{1, 2, 0}).b, ErrTotals},
		{"totals zero", newCrafter(1).pages(1, 0x1000, CodecS2, page).end(endTotals{1, 1, 1}).b, ErrTotals},
		{"seq gap", newCrafter(1).pages(1, 0x1000, CodecS2, page).frame(hdr(frameHeader{kind: FrameBarrier, round: 1, seq: 5}), nil).b, ErrSequence},
		{"seq repeat", func() []byte {
			c := newCrafter(1).barrier(1)
			c.seq = 0
			return c.frame(frameHeader{kind: FrameBarrier, round: 2, seq: 0}, nil).b
		}(), ErrSequence},
		{"round down", newCrafter(1).pages(2, 0x1000, CodecS2, page).pages(1, 0x1000, CodecS2, page).b, ErrOutOfOrder},
		{"pages after barrier", newCrafter(1).barrier(3).pages(3, 0x1000, CodecS2, page).b, ErrOutOfOrder},
		{"barrier twice", newCrafter(1).barrier(3).barrier(3).b, ErrOutOfOrder},
		{"barrier down", newCrafter(1).pages(4, 0x1000, CodecS2, page).barrier(3).b, ErrOutOfOrder},
		{"unknown type", newCrafter(1).frame(frameHeader{kind: 9}, nil).b, ErrUnknownFrame},
		{"unknown codec", newCrafter(1).frame(one(7, 1), s2page).b, ErrUnknownCodec},
		{"flags", newCrafter(1).frame(frameHeader{kind: FrameBarrier, flags: 1}, nil).b, ErrMalformed},
		{"too many pages", newCrafter(1).frame(frameHeader{kind: FramePages, pages: 1 << 31, stored: 1 << 31, payloadLen: 1<<32 - 1}, nil).b, ErrFrameTooLarge},
		{"257 pages", newCrafter(1).frame(frameHeader{kind: FramePages, pages: MaxFramePages + 1, payloadLen: 37}, nil).b, ErrFrameTooLarge},
		{"huge payload", newCrafter(1).frame(frameHeader{kind: FramePages, pages: 1, stored: 1, codec: CodecS2, payloadLen: 1<<32 - 1}, nil).b, ErrFrameTooLarge},
		{"no pages", newCrafter(1).frame(frameHeader{kind: FramePages, payloadLen: 4}, nil).b, ErrMalformed},
		{"stored > pages", newCrafter(1).frame(frameHeader{kind: FramePages, pages: 1, stored: 2, payloadLen: 5}, nil).b, ErrMalformed},
		{"unaligned", newCrafter(1).frame(frameHeader{kind: FramePages, addr: 0x1001, pages: 1, payloadLen: 5}, nil).b, ErrBadAddress},
		{"past 2^47", newCrafter(1).frame(frameHeader{kind: FramePages, addr: MaxAddress - PageSize, pages: 2, payloadLen: 5}, nil).b, ErrBadAddress},
		{"addr wraps", newCrafter(1).frame(frameHeader{kind: FramePages, addr: 1<<64 - PageSize, pages: 2, payloadLen: 5}, nil).b, ErrBadAddress},
		{"barrier payload", newCrafter(1).frame(frameHeader{kind: FrameBarrier}, []byte{1}).b, ErrFrameTooLarge},
		{"barrier addr", newCrafter(1).frame(frameHeader{kind: FrameBarrier, addr: 4096}, nil).b, ErrMalformed},
		{"end payload", newCrafter(1).frame(frameHeader{kind: FrameEnd}, make([]byte, 23)).b, ErrMalformed},
		{"end round", newCrafter(1).frame(frameHeader{kind: FrameEnd, round: 1}, make([]byte, 24)).b, ErrMalformed},
		{"none short", newCrafter(1).frame(one(CodecNone, 1), make([]byte, 5+PageSize-1)).b, ErrMalformed},
		{"compressed not smaller", newCrafter(1).frame(one(CodecS2, 1), make([]byte, 5+PageSize)).b, ErrMalformed},
		{"compressed empty", newCrafter(1).frame(one(CodecS2, 1), make([]byte, 5)).b, ErrMalformed},
		{"compressed nothing", newCrafter(1).frame(frameHeader{kind: FramePages, codec: CodecS2, pages: 1, stored: 0}, []byte{1, 0, 0, 0, 0}).b, ErrMalformed},
		{"bitmap count", newCrafter(1).frame(one(CodecS2, 1), append([]byte{1}, s2page[1:]...)).b, ErrMalformed},
		{"bitmap past end", newCrafter(1).frame(one(CodecS2, 1), append([]byte{2}, s2page[1:]...)).b, ErrMalformed},
		{"s2 garbage", newCrafter(1).frame(one(CodecS2, 1), append(bytes.Clone(s2page[:5]), 0x80, 0x20, 0xff, 0xff, 0xff, 0xff)).b, ErrCorrupt},
		{"s2 wrong size", newCrafter(1).frame(one(CodecS2, 1), append(bytes.Clone(s2page[:5]), s2.Encode(nil, page[:PageSize-1])...)).b, ErrCorrupt},
		{"s2 body corrupt", func() []byte {
			p := bytes.Clone(s2page)
			p[len(p)-3] ^= 0x55
			return newCrafter(1).frame(one(CodecS2, 1), p).b
		}(), ErrCorrupt},
		{"content crc", func() []byte {
			p := bytes.Clone(s2page)
			p[1] ^= 1
			return newCrafter(1).frame(one(CodecS2, 1), p).b
		}(), ErrChecksum},
		{"zstd wrong size", newCrafter(1).frame(frameHeader{kind: FramePages, codec: CodecZstd, pages: 3, stored: 3},
			append(binary.LittleEndian.AppendUint32([]byte{0}, 0), zstdTwo...)).b, ErrCorrupt},
		{"zstd garbage", newCrafter(1).frame(frameHeader{kind: FramePages, codec: CodecZstd, pages: 2, stored: 2},
			append(binary.LittleEndian.AppendUint32([]byte{0}, 0), bytes.Repeat([]byte{0x28}, 300)...)).b, ErrCorrupt},
		{"zstd two frames", newCrafter(1).frame(frameHeader{kind: FramePages, codec: CodecZstd, pages: 4, stored: 4},
			append(append(binary.LittleEndian.AppendUint32([]byte{0}, 0), zstdTwo...), zstdTwo...)).b, ErrCorrupt},
		{"zstd unknown size", newCrafter(1).frame(frameHeader{kind: FramePages, codec: CodecZstd, pages: 2, stored: 2},
			append(binary.LittleEndian.AppendUint32([]byte{0}, crc32c(twoPages)), zstdStream(t, twoPages)...)).b, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := readErrOf(tt.stream)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			checkSentinel(t, err, tt.name)
			t.Log(err)
		})
	}
}

// zstdStream compresses b as a zstd stream frame, which does not state its
// size.
func zstdStream(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Flush() // the header goes out before the size is known
	w.Close()
	return buf.Bytes()
}

// TestSpliceReorder moves whole valid frames around: taken from another
// stream, swapped, dropped, repeated.
func TestSpliceReorder(t *testing.T) {
	ops := smallOps()
	a, _ := writeStream(t, WriterOptions{Codec: CodecS2, StreamID: 1}, ops)
	b, _ := writeStream(t, WriterOptions{Codec: CodecS2, StreamID: 2}, ops)
	oa, ob := frameStarts(t, a), frameStarts(t, b)
	frame := func(s []byte, offs []int64, i int) []byte { return s[offs[i]:offs[i+1]] }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	hdrA := a[:streamHeaderSize]
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"frame of another stream", cat(hdrA, frame(a, oa, 0), frame(b, ob, 1), a[oa[2]:]), ErrChecksum},
		{"header of another stream", cat(b[:streamHeaderSize], a[streamHeaderSize:]), ErrChecksum},
		{"swapped", cat(hdrA, frame(a, oa, 1), frame(a, oa, 0), a[oa[2]:]), ErrSequence},
		{"dropped", cat(hdrA, frame(a, oa, 0), a[oa[2]:]), ErrSequence},
		{"repeated", cat(hdrA, frame(a, oa, 0), frame(a, oa, 0), a[oa[1]:]), ErrSequence},
		{"end early", cat(hdrA, frame(a, oa, 0), frame(a, oa, len(oa)-2)), ErrSequence},
	}
	for _, tt := range tests {
		_, _, err := readStream(t, tt.stream, expect(ops), 2)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestHostileLengthsAllocate checks that lengths claimed by frame headers
// are not allocated before they are checked.
func TestHostileLengthsAllocate(t *testing.T) {
	streams := [][]byte{
		newCrafter(1).frame(frameHeader{kind: FramePages, pages: 1 << 31, stored: 1 << 31, payloadLen: 1<<32 - 1}, nil).b,
		newCrafter(1).frame(frameHeader{kind: FramePages, pages: 256, stored: 256, codec: CodecNone, payloadLen: 1<<32 - 1}, nil).b,
		newCrafter(1).frame(frameHeader{kind: FrameEnd, payloadLen: 1<<32 - 1}, nil).b,
		newCrafter(1).frame(frameHeader{kind: FrameBarrier, payloadLen: 1 << 30}, nil).b,
	}
	for i, s := range streams {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		err := readErrOf(s)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("stream %d: got %v, want ErrFrameTooLarge", i, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
			t.Errorf("stream %d: allocated %d bytes", i, n)
		}
	}
}

// TestReadsNothingPastEnd checks that the Reader stops at the end frame.
func TestReadsNothingPastEnd(t *testing.T) {
	stream, _ := writeStream(t, WriterOptions{Codec: CodecS2}, smallOps())
	rest := []byte("data that follows the stream")
	src := bytes.NewReader(append(bytes.Clone(stream), rest...))
	r, err := NewReader(src, ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	if got, _ := io.ReadAll(src); !bytes.Equal(got, rest) {
		t.Errorf("after the stream: %q, want %q", got, rest)
	}
}
