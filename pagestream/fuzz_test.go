package pagestream

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
)

// fuzzSeeds are valid and nearly valid streams to start the fuzzers from.
// They are kept small (pages that compress well, zero pages): the fuzzer
// minimizes every input that finds new code, at a cost that grows with its
// size.
func fuzzSeeds(f *testing.F) [][]byte {
	page := compressible
	two := append(bytes.Clone(page), page...)
	ops := []op{
		{0, 0x10000, append(append(bytes.Clone(page), make([]byte, PageSize)...), page...)},
		{0, 0x20000, page},
		{round: 0},
		{2, 0x30000, make([]byte, 2*PageSize)},
		{2, 0x7fff0000, two},
		{round: 2},
	}
	var seeds [][]byte
	for _, c := range []Codec{CodecZstd, CodecS2} {
		s, _ := writeStream(f, WriterOptions{Codec: c, Workers: 1, StreamID: 1}, ops)
		seeds = append(seeds, s)
	}
	seeds = append(seeds,
		newCrafter(1).pages(1, 0x1000, CodecNone, page).barrier(1).end(endTotals{2, 1, 0}).b,
		newCrafter(1).pages(1, 0x1000, CodecS2, page).barrier(1).end(endTotals{2, 1, 0}).b,
		newCrafter(1).pages(1, 0x1000, CodecZstd, two).end(endTotals{1, 2, 0}).b,
		newCrafter(1).pages(1, 0x1000, CodecNone, make([]byte, 9*PageSize)).end(endTotals{1, 9, 9}).b,
		newCrafter(1).b,
		nil,
	)
	return seeds
}

// checkRead reads data as a stream to its end and checks what comes out:
// errors are *FrameErrors with a sentinel, frames are well formed, and
// memory stays bounded.
func checkRead(t *testing.T, data []byte) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r, err := NewReader(bytes.NewReader(data), ReaderOptions{Workers: 2})
	if err != nil {
		checkSentinel(t, err, "NewReader")
		return
	}
	frames := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			checkSentinel(t, err, "Next")
			break
		}
		frames++
		switch f.Kind {
		case FramePages:
			if f.Pages < 1 || f.Pages > MaxFramePages || len(f.Data) != f.Pages*PageSize || f.Addr%PageSize != 0 ||
				f.Addr+uint64(len(f.Data)) > MaxAddress || len(f.Zero) != (f.Pages+63)/64 {
				t.Fatalf("bad frame: %d pages at %#x, %d bytes, %d bitmap words", f.Pages, f.Addr, len(f.Data), len(f.Zero))
			}
			for i := range f.Pages {
				if f.IsZero(i) && !isZeroPage(f.Data[i*PageSize:(i+1)*PageSize]) {
					t.Fatalf("page %d marked zero is not", i)
				}
			}
		case FrameBarrier:
			if f.Data != nil || f.Pages != 0 {
				t.Fatal("barrier with pages")
			}
		default:
			t.Fatalf("frame of kind %v", f.Kind)
		}
	}
	r.Close()
	runtime.ReadMemStats(&after)
	// Each frame may take a payload and a page buffer of about 1 MiB if the
	// pools are empty; nothing may take more.
	if n, limit := after.TotalAlloc-before.TotalAlloc, uint64(16<<20+frames*(3<<20)); n > limit {
		t.Fatalf("allocated %d bytes for %d frames from %d bytes of input", n, frames, len(data))
	}
}

// FuzzReader feeds arbitrary bytes to the Reader.
func FuzzReader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(checkRead)
}

// FuzzReaderChecksummed feeds arbitrary bytes to the Reader after fixing up
// the stream header CRC and every frame's header CRC and chained trailer,
// so that the fuzzer gets past the checksums to the checks and the
// decompression behind them. (Content CRCs are left alone; they are
// checked after decompression.)
func FuzzReaderChecksummed(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		data = fixChecksums(bytes.Clone(data))
		checkRead(t, data)
		checkPacked(t, data)
	})
}

// checkPacked reads data whole and packed side by side: the same frames,
// the same errors, and a packed frame holds exactly the pages of the whole
// one that are not zero, in order.
func checkPacked(t *testing.T, data []byte) {
	whole, err := NewReader(bytes.NewReader(data), ReaderOptions{Workers: 1})
	if err != nil {
		return
	}
	defer whole.Close()
	packed, err := NewReader(bytes.NewReader(data), ReaderOptions{Workers: 1, Packed: true})
	if err != nil {
		t.Fatalf("packed NewReader: %v, whole: none", err)
	}
	defer packed.Close()
	for {
		fw, errw := whole.Next()
		fp, errp := packed.Next()
		if (errw == nil) != (errp == nil) {
			t.Fatalf("whole: %v, packed: %v", errw, errp)
		}
		if errw != nil {
			return
		}
		if fw.Kind != fp.Kind || fw.Addr != fp.Addr || fw.Pages != fp.Pages || fw.Stored != fp.Stored {
			t.Fatalf("whole frame %+v, packed %+v", fw, fp)
		}
		if fp.Kind != FramePages {
			continue
		}
		if len(fp.Data) != fp.Stored*PageSize {
			t.Fatalf("packed frame of %d stored pages holds %d bytes", fp.Stored, len(fp.Data))
		}
		s := 0
		for i := range fw.Pages {
			if fw.IsZero(i) {
				if fp.Page(i) != nil || !isZeroPage(fw.Page(i)) {
					t.Fatalf("zero page %d: packed Page %d bytes", i, len(fp.Page(i)))
				}
				continue
			}
			if !bytes.Equal(fw.Data[i*PageSize:(i+1)*PageSize], fp.Data[s*PageSize:(s+1)*PageSize]) || !bytes.Equal(fp.Page(i), fw.Page(i)) {
				t.Fatalf("page %d differs from stored page %d of the packed frame", i, s)
			}
			s++
		}
		if s != fp.Stored {
			t.Fatalf("%d pages not zero, packed frame says %d", s, fp.Stored)
		}
	}
}

// fixChecksums rewrites the checksums of b, read as a stream, to match.
func fixChecksums(b []byte) []byte {
	if len(b) < streamHeaderSize {
		return b
	}
	chain := crc32c(b[:streamHeaderSize-4])
	binary.LittleEndian.PutUint32(b[streamHeaderSize-4:], chain)
	off := streamHeaderSize
	for len(b)-off >= frameHeaderSize {
		h := b[off : off+frameHeaderSize]
		binary.LittleEndian.PutUint32(h[36:], crc32c(h[:36]))
		n := int(binary.LittleEndian.Uint32(h[32:]))
		if n > len(b)-off-frameHeaderSize-trailerSize {
			return b
		}
		end := off + frameHeaderSize + n
		chain = crcUpdate(chain, b[off:end])
		binary.LittleEndian.PutUint32(b[end:], chain)
		off = end + trailerSize
	}
	return b
}

func TestFixChecksums(t *testing.T) {
	s, _ := writeStream(t, WriterOptions{Codec: CodecS2, StreamID: 1}, smallOps())
	if got := fixChecksums(bytes.Clone(s)); !bytes.Equal(got, s) {
		t.Error("fixChecksums changed a valid stream")
	}
}

// FuzzCheckEnds feeds arbitrary bytes to CheckEnds: it never panics, fails
// only with a *FrameError wrapping a sentinel, and never refuses a stream
// the Reader reads whole (whose totals it must then report).
func FuzzCheckEnds(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		data = fixChecksums(data)
		st, err := CheckEnds(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			checkSentinel(t, err, "CheckEnds")
		}
		full, rerr := readAll(data)
		if rerr != nil {
			return
		}
		if err != nil {
			t.Fatalf("CheckEnds refused a stream the Reader reads whole: %v", err)
		}
		if st.Frames != full.Frames || st.Pages != full.Pages || st.ZeroPages != full.ZeroPages {
			t.Fatalf("CheckEnds says %+v, the Reader %+v", st, full)
		}
	})
}

// readAll reads data as a whole stream, nothing after it, and returns the
// Reader's stats.
func readAll(data []byte) (Stats, error) {
	br := bytes.NewReader(data)
	r, err := NewReader(br, ReaderOptions{Workers: 1})
	if err != nil {
		return Stats{}, err
	}
	defer r.Close()
	for {
		if _, err := r.Next(); err == io.EOF {
			break
		} else if err != nil {
			return Stats{}, err
		}
	}
	if br.Len() != 0 {
		return Stats{}, io.ErrUnexpectedEOF // bytes after the end frame
	}
	return r.Stats(), nil
}
