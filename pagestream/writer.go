package pagestream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/s2"
)

// WriterOptions configure a Writer. Note that the zero value writes pages
// uncompressed (CodecNone is 0): set Codec, to DefaultCodec or to what
// ParseCodec returns.
type WriterOptions struct {
	Codec   Codec
	Workers int // compression goroutines; 0 means runtime.GOMAXPROCS(0)
	Level   int // 0 means the codec's fast default; see compress.go

	// Adaptive lets the Writer store a frame's pages uncompressed instead of
	// compressing them when the compression workers fall behind the caller
	// (at least Workers frames waiting for one), so that compression never
	// slows the stream below what the CPUs can move: the compressed share
	// adjusts itself to the CPU left over. When the underlying writer is
	// the slow part, the workers keep up and every frame is compressed. The
	// stream's bytes then depend on timing; Stats.RawFrames counts the frames
	// stored uncompressed.
	Adaptive bool

	// StreamID goes into the stream header and seeds the checksum chain, so
	// that frames of one stream fail to verify in another. 0 picks a random
	// one; tests that want identical bytes set it.
	StreamID uint64
}

// Stats counts what went through a Writer or Reader.
type Stats struct {
	Frames    uint64 // frames, counting barrier frames and the end frame
	RawFrames uint64 // page frames whose pages are stored uncompressed
	Pages     uint64 // pages in page frames
	ZeroPages uint64 // of those, all-zero pages (sent as one bit each)
	BytesRaw  uint64 // Pages*PageSize
	BytesWire uint64 // bytes of the stream, stream header included
}

// Add adds the counts of t to s (of several streams).
func (s *Stats) Add(t Stats) {
	s.Frames += t.Frames
	s.RawFrames += t.RawFrames
	s.Pages += t.Pages
	s.ZeroPages += t.ZeroPages
	s.BytesRaw += t.BytesRaw
	s.BytesWire += t.BytesWire
}

// Writer writes a page stream.
//
// Concurrency: a Writer is used from one goroutine at a time; WritePages,
// Barrier, Flush, Close and Abort must not be called concurrently. Stats may
// be called from any goroutine at any time. Inside, WritePages hands frames
// to Workers compression goroutines and one output goroutine that checksums
// and writes them to the underlying writer in the order they were queued;
// at most a few frames per worker are in flight, and WritePages blocks only
// when that many are. Errors of the underlying writer are reported by the
// next call (WritePages, Barrier, Flush or Close); after one, nothing more is
// written.
//
// A Writer must be finished with Close (a complete stream) or Abort (a stream
// that reads as truncated); either stops its goroutines.
type Writer struct {
	w        io.Writer
	codec    Codec
	level    int
	adaptive bool
	busy     int // Adaptive: frames waiting for a worker that mean "behind"

	work    chan *wjob // to the workers
	ordered chan *wjob // to the output goroutine, in stream order
	workers sync.WaitGroup
	outDone chan struct{} // closed when the output goroutine returns

	failed atomic.Bool // an error is set; workers skip compression
	errMu  sync.Mutex
	err    error // first asynchronous error

	// Owned by the goroutine calling the Writer's methods.
	seq        uint64 // of the next frame
	round      uint32 // highest round queued
	barrier    uint32 // round of the last barrier, if hasBarrier
	hasBarrier bool
	closed     bool
	closeErr   error

	// Owned by the output goroutine.
	chain  uint32 // CRC of the last frame written (or of the stream header)
	totals endTotals

	frames, rawFrames, pages, zeroPages, wire atomic.Uint64
	compressNS, writeNS                       atomic.Int64
}

// wjob is one frame on its way through the Writer.
type wjob struct {
	hdr frameHeader
	src []byte  // page data, for page frames
	ref *srcRef // the caller's buffer src is part of
	// noCompress asks the worker to store the pages uncompressed (Adaptive).
	noCompress bool
	// rawFrame is set by the worker when it stored pages uncompressed;
	// rawCRC is then their content CRC, which the frame's checksum
	// reuses (crcCombine) for the rawLen bytes that end it.
	rawFrame bool
	rawCRC   uint32
	rawLen   int
	out      []byte // the encoded frame: header, payload, trailer (getBuf)
	done     chan struct{}
	// flushed, for flush markers (hdr.kind == 0): closed by the output
	// goroutine when it gets there.
	flushed chan struct{}
}

// srcRef counts the frames still reading a buffer given to WritePages.
type srcRef struct {
	n   atomic.Int32
	buf []byte
}

func (r *srcRef) release() {
	if r.n.Add(-1) == 0 {
		PutBuffer(r.buf)
	}
}

var wjobs = sync.Pool{New: func() any { return &wjob{done: make(chan struct{}, 1)} }}

// outLen is the buffer a page frame of n pages needs at most: header,
// bitmap, content CRC, the pages as s2 may encode them (the largest bound of
// the codecs) and the trailer.
func outLen(n int) int {
	return frameHeaderSize + bitmapLen(n) + contentCRCSize + s2.MaxEncodedLen(n*PageSize) + trailerSize
}

// NewWriter writes the stream header to w and starts the Writer's
// goroutines.
func NewWriter(w io.Writer, opts WriterOptions) (*Writer, error) {
	if !opts.Codec.valid() {
		return nil, fmt.Errorf("%w: %v", ErrUnknownCodec, opts.Codec)
	}
	if err := checkLevel(opts.Codec, opts.Level); err != nil {
		return nil, err
	}
	if opts.Workers < 0 {
		return nil, fmt.Errorf("pagestream: %d workers", opts.Workers)
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	id := opts.StreamID
	for id == 0 {
		id = rand.Uint64()
	}
	hdr := streamHeader{streamID: id}.appendTo(make([]byte, 0, streamHeaderSize))
	n, err := w.Write(hdr)
	if err == nil && n < len(hdr) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return nil, fmt.Errorf("pagestream: write stream header: %w", err)
	}
	// Enough frames in flight to keep every worker busy while the output
	// goroutine writes and the caller fills the next buffer.
	inflight := 4 * workers
	pw := &Writer{
		w:        w,
		codec:    opts.Codec,
		level:    opts.Level,
		adaptive: opts.Adaptive,
		busy:     workers,
		work:     make(chan *wjob, inflight),
		ordered:  make(chan *wjob, inflight),
		outDone:  make(chan struct{}),
		chain:    binary.LittleEndian.Uint32(hdr[streamHeaderSize-4:]),
	}
	pw.wire.Store(uint64(n))
	pw.workers.Add(workers)
	for range workers {
		go pw.worker()
	}
	go pw.output()
	return pw, nil
}

func (w *Writer) setErr(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
		w.failed.Store(true)
	}
	w.errMu.Unlock()
}

func (w *Writer) asyncErr() error {
	if !w.failed.Load() {
		return nil
	}
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// usable reports why the Writer cannot take more frames, if it cannot.
func (w *Writer) usable() error {
	if w.closed {
		return ErrClosed
	}
	return w.asyncErr()
}

// checkRound enforces the round order the reader checks: rounds never go
// down, and a barrier closes its round and all before it.
func (w *Writer) checkRound(round uint32) error {
	if round < w.round {
		return fmt.Errorf("%w: round %d after round %d", ErrOutOfOrder, round, w.round)
	}
	if w.hasBarrier && round <= w.barrier {
		return fmt.Errorf("%w: round %d after the barrier of round %d", ErrOutOfOrder, round, w.barrier)
	}
	return nil
}

// WritePages queues len(data)/PageSize pages starting at addr for round
// round. addr must be page aligned, and len(data) a non-zero multiple of
// PageSize. Calls larger than MaxFramePages pages are split into several
// frames. Rounds must not go down, and a round closed by Barrier takes no
// more pages.
//
// If WritePages returns nil, data belongs to the Writer: the caller must not
// touch it again, and the Writer passes it (up to its length, never beyond)
// to PutBuffer when done with it. If WritePages returns an error, it kept
// nothing. The error is either about the arguments or an earlier
// asynchronous failure (of the underlying writer), after which the Writer
// takes nothing more.
func (w *Writer) WritePages(round uint32, addr uint64, data []byte) error {
	if len(data) == 0 || len(data)%PageSize != 0 {
		return fmt.Errorf("pagestream: WritePages: %d bytes is not a positive multiple of the page size", len(data))
	}
	return w.WriteRuns(round, []Run{{Addr: addr, Pages: len(data) / PageSize}}, data)
}

// Run is Pages contiguous pages from Addr.
type Run struct {
	Addr  uint64
	Pages int
}

// WriteRuns queues runs of pages whose contents lie one after the other in
// data (len(data) is their pages times PageSize), each as WritePages would:
// one buffer read in one go from scattered places of a process serves
// several frames. data belongs to the Writer as with WritePages.
func (w *Writer) WriteRuns(round uint32, runs []Run, data []byte) error {
	if err := w.usable(); err != nil {
		return err
	}
	total, frames := 0, 0
	for _, r := range runs {
		if r.Pages <= 0 {
			return fmt.Errorf("pagestream: WriteRuns: a run of %d pages", r.Pages)
		}
		if r.Addr%PageSize != 0 || r.Addr > MaxAddress || uint64(r.Pages) > (MaxAddress-r.Addr)/PageSize {
			return fmt.Errorf("%w: WriteRuns: %d pages at %#x", ErrBadAddress, r.Pages, r.Addr)
		}
		total += r.Pages
		frames += (r.Pages + MaxFramePages - 1) / MaxFramePages
	}
	if total == 0 || len(data) != total*PageSize {
		return fmt.Errorf("pagestream: WriteRuns: %d bytes for %d pages", len(data), total)
	}
	if err := w.checkRound(round); err != nil {
		return err
	}
	w.round = round
	ref := &srcRef{buf: data[:len(data):len(data)]}
	ref.n.Store(int32(frames))
	off := 0
	for _, r := range runs {
		for first := 0; first < r.Pages; first += MaxFramePages {
			n := min(MaxFramePages, r.Pages-first)
			j := wjobs.Get().(*wjob)
			j.hdr = frameHeader{
				kind:  FramePages,
				round: round,
				seq:   w.seq,
				addr:  r.Addr + uint64(first)*PageSize,
				pages: uint32(n),
			}
			w.seq++
			j.src = data[off : off+n*PageSize]
			off += n * PageSize
			j.ref = ref
			j.noCompress = w.adaptive && len(w.work) >= w.busy
			w.ordered <- j
			w.work <- j
		}
	}
	return nil
}

// Barrier queues a barrier frame for round: every page of round, and of the
// rounds before it, comes before it in the stream, and no page of those
// rounds may follow. Barrier does not wait for the frame to be written; see
// Flush.
func (w *Writer) Barrier(round uint32) error {
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.checkRound(round); err != nil {
		return err
	}
	w.round, w.barrier, w.hasBarrier = round, round, true
	j := wjobs.Get().(*wjob)
	j.hdr = frameHeader{kind: FrameBarrier, round: round, seq: w.seq}
	w.seq++
	w.ordered <- j
	return nil
}

// Flush waits until every frame queued so far has been handed to the
// underlying writer (it does not flush that writer), and returns the first
// asynchronous error, if any. Use it where the other side must see a frame
// before the caller goes on, as after the barrier of a round.
func (w *Writer) Flush() error {
	if err := w.usable(); err != nil {
		return err
	}
	j := &wjob{flushed: make(chan struct{})}
	w.ordered <- j
	<-j.flushed
	return w.asyncErr()
}

// Close writes the frames still queued and the end frame, waits for them to
// be written, and stops the Writer's goroutines. It does not close the
// underlying writer. It returns the first error of the Writer's life, if
// any; then the stream has no end frame. Close after Close or Abort returns
// the same result again.
func (w *Writer) Close() error {
	if w.closed {
		return w.closeErr
	}
	w.closed = true
	if w.asyncErr() == nil {
		j := wjobs.Get().(*wjob)
		j.hdr = frameHeader{kind: FrameEnd, seq: w.seq, payloadLen: endPayloadSize}
		w.seq++
		w.ordered <- j
	}
	w.shutdown()
	w.closeErr = w.asyncErr()
	return w.closeErr
}

// Abort stops the Writer without finishing the stream: queued frames are
// dropped (a frame being written may still complete) and no end frame is
// written, so a reader sees a truncated stream. Use it when a dump fails
// half-way, so that what was written can never pass for a whole one. Abort
// after Close does nothing.
func (w *Writer) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.setErr(ErrAborted)
	w.shutdown()
	w.closeErr = w.asyncErr()
}

func (w *Writer) shutdown() {
	close(w.work)
	close(w.ordered)
	w.workers.Wait()
	<-w.outDone
}

// Stats returns the counts so far; after Close they are final.
func (w *Writer) Stats() Stats {
	p := w.pages.Load()
	return Stats{
		Frames:    w.frames.Load(),
		RawFrames: w.rawFrames.Load(),
		Pages:     p,
		ZeroPages: w.zeroPages.Load(),
		BytesRaw:  p * PageSize,
		BytesWire: w.wire.Load(),
	}
}

// Times says where the Writer's time went so far: compress is the time its
// workers spent encoding frames, summed over them; write the time spent in
// the underlying writer's Write (a slow link or a full window shows
// there). Like Stats, it may be called from any goroutine.
func (w *Writer) Times() (compress, write time.Duration) {
	return time.Duration(w.compressNS.Load()), time.Duration(w.writeNS.Load())
}

func (w *Writer) worker() {
	defer w.workers.Done()
	c := newCompressor(w.codec, w.level)
	defer c.release()
	var scratch []byte
	for j := range w.work {
		if !w.failed.Load() {
			if scratch == nil {
				scratch = make([]byte, 0, MaxFramePages*PageSize)
			}
			t := time.Now()
			encodePages(c, j, scratch)
			w.compressNS.Add(int64(time.Since(t)))
		}
		j.ref.release()
		j.src, j.ref = nil, nil
		j.done <- struct{}{}
	}
}

var zeroPage [PageSize]byte

func isZeroPage(p []byte) bool { return bytes.Equal(p, zeroPage[:]) }

// encodePages builds the page frame of j in j.out, all but the trailer.
// scratch has room for MaxFramePages pages.
func encodePages(c *compressor, j *wjob, scratch []byte) {
	n := int(j.hdr.pages)
	src := j.src
	bl := bitmapLen(n)
	out := getBuf(outLen(n))[:frameHeaderSize+bl+contentCRCSize]
	bm := out[frameHeaderSize : frameHeaderSize+bl]
	clear(bm)
	zero := 0
	for i := range n {
		if isZeroPage(src[i*PageSize : (i+1)*PageSize]) {
			bm[i>>3] |= 1 << (i & 7)
			zero++
		}
	}
	stored := n - zero
	compress := stored > 0 && c.codec != CodecNone && !j.noCompress && !incompressible(src, bm, n, stored)
	// raw is the stored pages in one piece: src itself if there are no
	// holes, else gathered into scratch for the compressor, or straight
	// into place in out when they go uncompressed.
	base := len(out)
	var raw []byte
	switch {
	case zero == 0:
		raw = src
	case compress:
		raw = gather(scratch[:0], src, bm, n)
	default:
		out = gather(out, src, bm, n)
		raw = out[base:]
	}
	content := crc32c(raw)
	binary.LittleEndian.PutUint32(out[frameHeaderSize+bl:], content)
	codec := CodecNone
	if compress {
		comp := c.compress(out, raw)
		if len(comp)-base < len(raw) {
			out, codec = comp, c.codec
		} else {
			out = append(out[:base], raw...)
		}
	} else if zero == 0 {
		out = append(out, raw...)
	}
	if codec == CodecNone && stored > 0 {
		j.rawFrame, j.rawCRC, j.rawLen = true, content, len(raw)
	}
	j.hdr.codec = codec
	j.hdr.stored = uint32(stored)
	j.hdr.payloadLen = uint32(len(out) - frameHeaderSize)
	j.hdr.put(out)
	j.out = out
}

// probePages is how many stored pages of a frame incompressible tries.
const probePages = 4

// incompressible says whether the stored pages of src (n pages, zero
// bitmap bm, stored of them not zero) look like data no codec can shrink
// (random, encrypted or already compressed memory): s2's estimate, which
// writes nothing, gains nothing on any of probePages pages spread over
// them. Such a frame is stored as it is, copied once, instead of being
// compressed (s2 copies incompressible input whole into its output)
// and then stored anyway. A frame that would have shrunk a little, its
// probed pages being incompressible and others not, goes uncompressed:
// the rare loss of ratio buys compression's cost on every frame of
// incompressible memory.
func incompressible(src, bm []byte, n, stored int) bool {
	want := min(probePages, stored)
	next, k, seen := 0, 0, 0 // next stored index to probe, probes made, stored pages seen
	for i := 0; i < n && k < want; i++ {
		if bm[i>>3]&(1<<(i&7)) != 0 {
			continue
		}
		if seen == next {
			if s2.EstimateBlockSize(src[i*PageSize:(i+1)*PageSize]) >= 0 {
				return false
			}
			k++
			next = k * stored / want
		}
		seen++
	}
	return k > 0
}

// gather appends the pages of src (n of them) whose bit in the zero bitmap
// bm is clear to dst, in runs.
func gather(dst, src, bm []byte, n int) []byte {
	for i := 0; i < n; {
		if bm[i>>3]&(1<<(i&7)) != 0 {
			i++
			continue
		}
		k := i + 1
		for k < n && bm[k>>3]&(1<<(k&7)) == 0 {
			k++
		}
		dst = append(dst, src[i*PageSize:k*PageSize]...)
		i = k
	}
	return dst
}

// batchSize is how many bytes of small frames the output goroutine gathers
// into one write of the underlying writer.
const batchSize = 256 << 10

// output writes the frames in order: it waits for each page frame's
// compression, chains and appends the trailer, and writes it. Frames that
// are ready one after the other go out in one write of up to batchSize
// bytes: a frame of one scattered page costs a write (on a live stream, a
// wake-up of yamux's send loop and a system call) otherwise. A frame is
// never held back while nothing follows it.
func (w *Writer) output() {
	defer close(w.outDone)
	batch := make([]byte, 0, batchSize)
	for j := range w.ordered {
		switch j.hdr.kind {
		case 0:
			batch = w.writeOut(batch)
			close(j.flushed)
			continue
		case FramePages:
			<-j.done
		}
		if !w.failed.Load() {
			w.seal(j)
			switch {
			case len(j.out) > batchSize/2:
				batch = w.writeOut(batch)
				w.writeOut(j.out)
			default:
				if len(batch)+len(j.out) > batchSize {
					batch = w.writeOut(batch)
				}
				batch = append(batch, j.out...)
				if len(w.ordered) == 0 {
					batch = w.writeOut(batch)
				}
			}
		}
		if j.out != nil {
			putBuf(j.out)
			j.out = nil
		}
		j.rawFrame, j.rawCRC, j.rawLen = false, 0, 0
		wjobs.Put(j)
	}
	w.writeOut(batch)
}

// writeOut writes b (whole frames) to the underlying writer unless the
// Writer failed, and returns b emptied.
func (w *Writer) writeOut(b []byte) []byte {
	if len(b) == 0 || w.failed.Load() {
		return b[:0]
	}
	t := time.Now()
	n, err := w.w.Write(b)
	w.writeNS.Add(int64(time.Since(t)))
	w.wire.Add(uint64(n))
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.setErr(fmt.Errorf("pagestream: write frames at byte %d of the stream: %w", w.wire.Load()-uint64(n), err))
	}
	return b[:0]
}

// seal finishes frame j in j.out (barrier and end frames are built here),
// appends its trailer chained to the frame before, and counts it. The
// counts run ahead of the writes by at most a batch; a failed write ends
// the stream anyway.
func (w *Writer) seal(j *wjob) {
	switch j.hdr.kind {
	case FrameBarrier:
		j.out = getBuf(frameHeaderSize + trailerSize)[:frameHeaderSize]
		j.hdr.put(j.out)
	case FrameEnd:
		w.totals.frames = j.hdr.seq
		j.out = w.totals.appendTo(getBuf(frameHeaderSize + endPayloadSize + trailerSize)[:frameHeaderSize])
		j.hdr.put(j.out)
	}
	var crc uint32
	if j.rawLen > 0 {
		// The stored pages end the frame: their CRC is known.
		head := len(j.out) - j.rawLen
		crc = crcCombine(crcUpdate(w.chain, j.out[:head]), j.rawCRC, j.rawLen)
	} else {
		crc = crcUpdate(w.chain, j.out)
	}
	j.out = binary.LittleEndian.AppendUint32(j.out, crc)
	w.chain = crc
	w.frames.Add(1)
	if j.hdr.kind == FramePages {
		zero := uint64(j.hdr.pages - j.hdr.stored)
		w.totals.pages += uint64(j.hdr.pages)
		w.totals.zeroPages += zero
		w.pages.Add(uint64(j.hdr.pages))
		w.zeroPages.Add(zero)
		if j.rawFrame {
			w.rawFrames.Add(1)
		}
	}
}
