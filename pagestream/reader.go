package pagestream

import (
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// ReaderOptions configure a Reader.
type ReaderOptions struct {
	Workers int // decompression goroutines; 0 means runtime.GOMAXPROCS(0)
	// Structure checks the stream's structure only: headers, sizes, the
	// chained frame checksums, order and totals, but does not decompress
	// page frames (their Data is nil). It is what Verify uses.
	Structure bool
	// Packed leaves the stored pages of a page frame packed: Data holds
	// only the pages that are not all zeros, in address order (Stored of
	// them), and the zero pages are only bits of Zero. A caller that
	// writes pages with scatter-gather calls saves moving every page to
	// its place and clearing the zero ones; see Frame.Stored. Pages stored
	// uncompressed are not even copied: Data is then the part of the
	// frame's pooled payload buffer that holds them.
	Packed bool
}

// Frame is a frame returned by Reader.Next: a batch of pages or a barrier.
type Frame struct {
	Kind   FrameKind // FramePages or FrameBarrier
	Round  uint32
	Seq    uint64 // the frame's number in the stream, from 0
	Offset int64  // the frame's byte offset in the stream
	Addr   uint64 // address of the first page (page frames)
	Pages  int    // pages in the frame (page frames)

	// Data holds Pages*PageSize bytes, decompressed, with the zero pages
	// filled with zeros; with ReaderOptions.Packed, only the Stored pages
	// that are not all zeros, one after the other (Stored*PageSize bytes).
	// It is valid until the next call to Next or Close, unless the caller
	// takes it with Keep.
	Data []byte
	// Stored is the number of pages of the frame that are not all zeros.
	Stored int
	// Zero is a bitmap of the all-zero pages: bit i%64 of Zero[i/64] is set
	// when page i is all zeros. A caller writing into fresh (zeroed) memory
	// can skip those pages.
	Zero []uint64

	buf  []byte // the pooled buffer behind Data
	kept bool
}

// IsZero reports whether page i of the frame is all zeros.
func (f *Frame) IsZero(i int) bool {
	return f.Zero[i>>6]&(1<<(i&63)) != 0
}

// Page returns the bytes of page i of the frame in Data, or nil for a zero
// page that Data does not hold (a packed frame's: ReaderOptions.Packed).
func (f *Frame) Page(i int) []byte {
	if len(f.Data) == f.Pages*PageSize {
		return f.Data[i*PageSize : (i+1)*PageSize]
	}
	if f.IsZero(i) {
		return nil
	}
	zero := 0 // zero pages before page i
	for w := range i >> 6 {
		zero += bits.OnesCount64(f.Zero[w])
	}
	zero += bits.OnesCount64(f.Zero[i>>6] & (1<<(i&63) - 1))
	s := i - zero
	return f.Data[s*PageSize : (s+1)*PageSize]
}

// Keep hands Data over to the caller: it stays valid after the next call to
// Next, and the caller may pass it to PutBuffer when done with it.
func (f *Frame) Keep() { f.kept = true }

// Reader reads a page stream.
//
// Concurrency: a Reader is used from one goroutine at a time (Next, Close);
// Stats may be called from any goroutine. Inside, one goroutine reads and
// checks frames from the underlying reader and Workers goroutines
// decompress page frames; Next returns them in stream order. A frame is
// returned only after its checksums, its place in the sequence and round
// order, and its decompressed size and content checksum all verified; the
// bytes of a bad frame are never returned.
//
// The Reader reads nothing past the end frame. Its goroutines stop by
// themselves once Next has returned an error or io.EOF; a caller that stops
// earlier must call Close. Close waits for the read goroutine, so if the
// underlying reader can block forever (a network stream), unblock it first
// (close it or set a deadline).
type Reader struct {
	r         io.Reader
	streamID  uint64
	structure bool // check structure only, see ReaderOptions
	packed    bool // leave stored pages packed, see ReaderOptions

	ordered chan *rjob // frames in stream order, to Next
	work    chan *rjob // page frames, to the workers
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup

	// Owned by the goroutine calling Next.
	cur    *rjob
	err    error // sticky: io.EOF, the stream's error, or ErrClosed
	closed bool

	frames, rawFrames, pages, zeroPages, wire atomic.Uint64
}

// rjob is one frame on its way through the Reader.
type rjob struct {
	Frame
	hdr     frameHeader
	size    int64  // bytes on the wire
	payload []byte // payload and trailer, from getBuf; page frames only
	zero    [MaxFramePages / 64]uint64
	err     *FrameError
	done    chan struct{} // closed when decoded; page frames only
	// lateChain: a frame of pages stored as they are, whose chained
	// checksum the worker checks from their content CRC (crcCombine)
	// instead of the read loop reading them twice: headCRC is the chain
	// over the frame up to them, trailer what the frame says.
	lateChain        bool
	headCRC, trailer uint32
}

// NewReader reads and checks the stream header and starts the Reader's
// goroutines.
func NewReader(r io.Reader, opts ReaderOptions) (*Reader, error) {
	if opts.Workers < 0 {
		return nil, errors.New("pagestream: negative Workers")
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var hb [streamHeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return nil, readErr(0, err, "stream header")
	}
	h, chain, fe := parseStreamHeader(hb[:])
	if fe != nil {
		return nil, fe
	}
	inflight := 4 * workers
	pr := &Reader{
		r:         r,
		structure: opts.Structure,
		packed:    opts.Packed,
		streamID:  h.streamID,
		ordered:   make(chan *rjob, inflight),
		work:      make(chan *rjob, inflight),
		stop:      make(chan struct{}),
	}
	pr.wire.Store(streamHeaderSize)
	pr.wg.Add(1 + workers)
	go pr.readLoop(chain)
	for range workers {
		go pr.worker()
	}
	return pr, nil
}

// StreamID returns the stream ID from the stream header.
func (r *Reader) StreamID() uint64 { return r.streamID }

func readErr(off int64, err error, what string) *FrameError {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return frameErr(off, ErrTruncated, "%s cut short", what)
	}
	return &FrameError{Offset: off, Reason: "reading " + what, Err: err}
}

// send passes j on, unless the Reader is being closed.
func (r *Reader) send(ch chan<- *rjob, j *rjob) bool {
	select {
	case ch <- j:
		return true
	case <-r.stop:
		return false
	}
}

// readLoop reads frames and checks everything that can be checked without
// decompressing, in stream order. It ends after the end frame, at the first
// error (which it sends to Next as a frame), or when the Reader is closed.
func (r *Reader) readLoop(chain uint32) {
	defer r.wg.Done()
	defer close(r.work)
	var (
		off        = int64(streamHeaderSize)
		seq        uint64
		round      uint32
		barrier    uint32
		hasBarrier bool
		totals     endTotals
		hb         [frameHeaderSize]byte
		small      [endPayloadSize + trailerSize]byte
	)
	fail := func(fe *FrameError) { r.send(r.ordered, &rjob{err: fe}) }
	for {
		if _, err := io.ReadFull(r.r, hb[:]); err != nil {
			if err == io.EOF {
				fail(frameErr(off, ErrTruncated, "stream ends after %d frames without an end frame", seq))
			} else {
				fail(readErr(off, err, "frame header"))
			}
			return
		}
		h, fe := parseFrameHeader(hb[:], off)
		if fe != nil {
			fail(fe)
			return
		}
		if h.seq != seq {
			fail(frameErr(off, ErrSequence, "frame %d where frame %d belongs", h.seq, seq))
			return
		}
		if h.kind != FrameEnd {
			if h.round < round {
				fail(frameErr(off, ErrOutOfOrder, "frame %d: %v of round %d after round %d", h.seq, h.kind, h.round, round))
				return
			}
			if hasBarrier && h.round <= barrier {
				fail(frameErr(off, ErrOutOfOrder, "frame %d: %v of round %d after the barrier of round %d", h.seq, h.kind, h.round, barrier))
				return
			}
		}

		j := &rjob{hdr: h, size: frameHeaderSize + int64(h.payloadLen) + trailerSize}
		j.Offset = off
		var buf []byte
		if h.kind == FramePages {
			j.payload = getBuf(int(h.payloadLen) + trailerSize)
			buf = j.payload
		} else {
			buf = small[:h.payloadLen+trailerSize]
		}
		// From here on, a failing frame hands its payload buffer back.
		fail := func(fe *FrameError) {
			if j.payload != nil {
				putBuf(j.payload)
			}
			fail(fe)
		}
		if _, err := io.ReadFull(r.r, buf); err != nil {
			fail(readErr(off, err, h.kind.String()+" frame "+itoa(h.seq)))
			return
		}
		body := buf[:h.payloadLen]
		want := binary.LittleEndian.Uint32(buf[h.payloadLen:])
		if raw := int(h.stored) * PageSize; h.kind == FramePages && h.codec == CodecNone && raw > 0 && !r.structure {
			// Pages stored as they are: the worker, which computes
			// their CRC anyway, checks the chain (decodePages). The
			// next frame chains from what this one says; if that is
			// wrong, this frame's error comes first.
			j.lateChain, j.trailer = true, want
			j.headCRC = crcUpdate(crcUpdate(chain, hb[:]), body[:len(body)-raw])
		} else if got := crcUpdate(crcUpdate(chain, hb[:]), body); got != want {
			fail(frameErr(off, ErrChecksum, "frame %d crc %08x, computed %08x (chained from the frame before)", h.seq, want, got))
			return
		}
		chain = want

		switch h.kind {
		case FramePages:
			zero := h.pages - h.stored
			if !checkBitmap(body[:bitmapLen(int(h.pages))], int(h.pages), int(zero)) {
				fail(frameErr(off, ErrMalformed, "frame %d: zero bitmap does not match %d zero pages of %d", h.seq, zero, h.pages))
				return
			}
			totals.pages += uint64(h.pages)
			totals.zeroPages += uint64(zero)
			round = h.round
			j.done = make(chan struct{})
		case FrameBarrier:
			round, barrier, hasBarrier = h.round, h.round, true
			j.Frame = Frame{Kind: FrameBarrier, Round: h.round, Seq: h.seq, Offset: off}
		case FrameEnd:
			totals.frames = seq
			if got := parseEndTotals(body); got != totals {
				fail(frameErr(off, ErrTotals, "end frame says %d frames, %d pages, %d zero; stream has %d, %d, %d",
					got.frames, got.pages, got.zeroPages, totals.frames, totals.pages, totals.zeroPages))
				return
			}
		}
		seq++
		off += j.size

		if !r.send(r.ordered, j) {
			return
		}
		if h.kind == FramePages && !r.send(r.work, j) {
			return
		}
		if h.kind == FrameEnd {
			return
		}
	}
}

func (r *Reader) worker() {
	defer r.wg.Done()
	var d decompressor
	defer d.release()
	for j := range r.work {
		if r.structure {
			putBuf(j.payload)
			j.payload = nil
			h := j.hdr
			j.Frame = Frame{Kind: FramePages, Round: h.round, Seq: h.seq, Offset: j.Offset, Addr: h.addr, Pages: int(h.pages), Stored: int(h.stored)}
		} else {
			decodePages(&d, j, r.packed)
		}
		close(j.done)
	}
}

// decodePages decompresses page frame j into a pooled buffer, checks it, and
// fills in j.Frame, or sets j.err. With packed, the stored pages stay
// packed (ReaderOptions.Packed).
func decodePages(d *decompressor, j *rjob, packed bool) {
	h := j.hdr
	pages, stored := int(h.pages), int(h.stored)
	body := j.payload[:h.payloadLen]
	defer func() {
		if j.payload != nil {
			putBuf(j.payload)
			j.payload = nil
		}
	}()
	bl := bitmapLen(pages)
	bm := body[:bl]
	want := binary.LittleEndian.Uint32(body[bl:])
	comp := body[bl+contentCRCSize:]

	n := pages * PageSize
	if packed {
		n = stored * PageSize
	}
	var buf, data []byte
	switch {
	case packed && h.codec == CodecNone && n > 0 && len(comp) == n:
		// The payload holds the stored pages as they are (incompressible
		// memory): Data is that part of it, not a copy.
		buf, data = j.payload, comp[:n:n]
		j.payload = nil
	case n > 0:
		buf = GetBuffer(n)
		data = buf[:n:n]
		fallthrough
	default:
		if err := d.decompress(h.codec, data[:stored*PageSize], comp); err != nil {
			PutBuffer(buf)
			j.err = frameErr(j.Offset, ErrCorrupt, "frame %d: %v: %v", h.seq, h.codec, err)
			return
		}
	}
	got := crc32c(data[:stored*PageSize])
	if j.lateChain {
		if c := crcCombine(j.headCRC, got, stored*PageSize); c != j.trailer {
			PutBuffer(buf)
			j.err = frameErr(j.Offset, ErrChecksum, "frame %d crc %08x, computed %08x (chained from the frame before)", h.seq, j.trailer, c)
			return
		}
	}
	if got != want {
		PutBuffer(buf)
		j.err = frameErr(j.Offset, ErrChecksum, "frame %d: content crc %08x, computed %08x", h.seq, want, got)
		return
	}
	// Move the stored pages to their places, last first (a page never moves
	// down), and zero the zero pages.
	if stored < pages && !packed {
		s := stored
		for i := pages - 1; i >= 0; i-- {
			p := data[i*PageSize : (i+1)*PageSize]
			if bm[i>>3]&(1<<(i&7)) != 0 {
				clear(p)
				continue
			}
			s--
			if s != i {
				copy(p, data[s*PageSize:(s+1)*PageSize])
			}
		}
	}
	for i, b := range bm {
		j.zero[i/8] |= uint64(b) << (8 * (i % 8))
	}
	j.Frame = Frame{
		Kind:   FramePages,
		Round:  h.round,
		Seq:    h.seq,
		Offset: j.Offset,
		Addr:   h.addr,
		Pages:  pages,
		Stored: stored,
		Data:   data,
		Zero:   j.zero[:(pages+63)/64],
		buf:    buf,
	}
}

// Next returns the next frame in stream order: page frames and barriers. It
// returns io.EOF after a valid end frame whose totals match the stream, and
// a *FrameError for anything wrong, including a stream that ends without an
// end frame (ErrTruncated). After an error, Next returns the same error
// again.
func (r *Reader) Next() (*Frame, error) {
	if c := r.cur; c != nil {
		r.cur = nil
		if c.buf != nil && !c.kept {
			PutBuffer(c.buf)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	j := <-r.ordered
	if j.done != nil {
		<-j.done
	}
	if j.err != nil {
		r.err = j.err
		r.stopped.Do(func() { close(r.stop) })
		return nil, r.err
	}
	r.frames.Add(1)
	r.wire.Add(uint64(j.size))
	switch j.hdr.kind {
	case FrameEnd:
		r.err = io.EOF
		return nil, io.EOF
	case FramePages:
		r.pages.Add(uint64(j.hdr.pages))
		r.zeroPages.Add(uint64(j.hdr.pages - j.hdr.stored))
		if j.hdr.codec == CodecNone && j.hdr.stored > 0 {
			r.rawFrames.Add(1)
		}
	}
	r.cur = j
	return &j.Frame, nil
}

// Close stops the Reader's goroutines and releases its buffers; the current
// frame's Data is invalid afterwards unless kept. It does not close the
// underlying reader. Next after Close returns the error or io.EOF the
// stream ended with, or ErrClosed.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stopped.Do(func() { close(r.stop) })
	r.wg.Wait()
	if c := r.cur; c != nil {
		r.cur = nil
		if c.buf != nil && !c.kept {
			PutBuffer(c.buf)
		}
	}
	if r.err == nil {
		r.err = ErrClosed
	}
	return nil
}

// Stats returns the counts of the frames Next returned so far, the end
// frame included once Next returned io.EOF.
func (r *Reader) Stats() Stats {
	p := r.pages.Load()
	return Stats{
		Frames:    r.frames.Load(),
		RawFrames: r.rawFrames.Load(),
		Pages:     p,
		ZeroPages: r.zeroPages.Load(),
		BytesRaw:  p * PageSize,
		BytesWire: r.wire.Load(),
	}
}

// Verify reads a whole stream and checks its structure without
// decompressing it: every frame's header, size, chained checksum, sequence
// and round order, and the end frame's totals. A truncated stream or a
// flipped byte fails here, cheaply, before anything acts on the stream;
// the content checksum of each page frame is checked when it is read for
// real.
func Verify(r io.Reader) (Stats, error) {
	rd, err := NewReader(r, ReaderOptions{Structure: true, Workers: 1})
	if err != nil {
		return Stats{}, err
	}
	defer rd.Close()
	for {
		if _, err := rd.Next(); err != nil {
			if err == io.EOF {
				return rd.Stats(), nil
			}
			return rd.Stats(), err
		}
	}
}

// endFrameSize is the size of the end frame: header, totals and trailer.
const endFrameSize = frameHeaderSize + endPayloadSize + trailerSize

// CheckEnds reads only the two ends of a whole stream of size bytes: the
// stream header, and the end frame, which must fill the last bytes. It
// checks the header and the end frame's own header checksum, kind, size
// and totals (not its trailer, which chains every frame before it), and
// returns the totals as Stats (Frames counts the end frame). A stream cut
// anywhere, however its size was recorded, fails here (ErrTruncated) at
// the cost of two small reads; a flipped byte inside it does not: that is
// found by a Reader, which checks everything before it returns a frame.
// A restore calls it before anything is created and verifies the rest as
// it reads the pages, instead of reading the whole stream twice.
func CheckEnds(r io.ReaderAt, size int64) (Stats, error) {
	if size < streamHeaderSize {
		return Stats{}, frameErr(0, ErrTruncated, "%d bytes, shorter than the stream header", size)
	}
	var hb [streamHeaderSize]byte
	if _, err := r.ReadAt(hb[:], 0); err != nil {
		return Stats{}, readErr(0, err, "stream header")
	}
	if _, _, fe := parseStreamHeader(hb[:]); fe != nil {
		return Stats{}, fe
	}
	off := size - endFrameSize
	if off < streamHeaderSize {
		return Stats{}, frameErr(streamHeaderSize, ErrTruncated, "%d bytes, no room for the end frame", size)
	}
	var eb [endFrameSize]byte
	if _, err := r.ReadAt(eb[:], off); err != nil {
		return Stats{}, readErr(off, err, "end frame")
	}
	h, fe := parseFrameHeader(eb[:frameHeaderSize], off)
	if fe != nil {
		// What lies there is not a frame header: the stream was cut, or
		// goes on past its end frame.
		return Stats{}, frameErr(off, ErrTruncated, "no end frame in the last %d bytes (%v)", endFrameSize, fe.Err)
	}
	if h.kind != FrameEnd {
		return Stats{}, frameErr(off, ErrTruncated, "the last %d bytes are a %v frame, not the end frame", endFrameSize, h.kind)
	}
	t := parseEndTotals(eb[frameHeaderSize:])
	switch {
	case t.frames != h.seq:
		return Stats{}, frameErr(off, ErrTotals, "end frame %d says %d frames before it", h.seq, t.frames)
	case t.zeroPages > t.pages:
		return Stats{}, frameErr(off, ErrTotals, "end frame says %d zero pages of %d", t.zeroPages, t.pages)
	case t.frames > uint64(off-streamHeaderSize)/(frameHeaderSize+trailerSize):
		return Stats{}, frameErr(off, ErrTotals, "end frame says %d frames, more than %d bytes hold", t.frames, off-streamHeaderSize)
	case t.pages > t.frames*MaxFramePages:
		return Stats{}, frameErr(off, ErrTotals, "end frame says %d pages in %d frames", t.pages, t.frames)
	}
	return Stats{Frames: t.frames + 1, Pages: t.pages, ZeroPages: t.zeroPages, BytesRaw: t.pages * PageSize, BytesWire: uint64(size)}, nil
}
