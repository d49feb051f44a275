package pagestream

import (
	"encoding/binary"
	"hash/crc32"
	"math/bits"
)

// Sizes and limits of the format. See the package comment for the layout.
const (
	// PageSize is the size of a memory page (x86-64).
	PageSize  = 4096
	pageShift = 12

	// MaxFramePages is the largest number of pages in one frame: 1 MiB of
	// page data, large enough for the codecs to reach their speed and ratio,
	// small enough to spread a dump over the workers and keep little memory
	// in flight.
	MaxFramePages = 256

	// MaxAddress bounds page addresses: addr+pages*PageSize <= MaxAddress,
	// the top of the x86-64 user address space with 4-level paging.
	MaxAddress uint64 = 1 << 47

	// Version is the format version written by this package, the only one
	// it reads.
	Version = 1

	streamHeaderSize = 32
	frameHeaderSize  = 40
	trailerSize      = 4
	contentCRCSize   = 4
	endPayloadSize   = 24
	maxBitmapLen     = MaxFramePages / 8

	// maxPayload is the largest payload of any frame.
	maxPayload = maxBitmapLen + contentCRCSize + MaxFramePages*PageSize
)

var magic = [8]byte{'M', 'I', 'G', 'P', 'A', 'G', 'E', 'S'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func crcUpdate(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// FrameKind is the type of a frame.
type FrameKind uint8

const (
	FramePages   FrameKind = 1 // a batch of pages at consecutive addresses
	FrameBarrier FrameKind = 2 // every page of Round comes before it
	FrameEnd     FrameKind = 3 // last frame, with the totals; never returned by Next
)

func (k FrameKind) String() string {
	switch k {
	case FramePages:
		return "pages"
	case FrameBarrier:
		return "barrier"
	case FrameEnd:
		return "end"
	}
	return "kind(" + itoa(uint64(k)) + ")"
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// streamHeader is the first streamHeaderSize bytes of a stream.
type streamHeader struct {
	flags    uint16
	streamID uint64
}

func (h streamHeader) appendTo(b []byte) []byte {
	start := len(b)
	b = append(b, magic[:]...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, h.flags)
	b = binary.LittleEndian.AppendUint32(b, PageSize)
	b = binary.LittleEndian.AppendUint64(b, h.streamID)
	b = binary.LittleEndian.AppendUint32(b, 0) // reserved
	return binary.LittleEndian.AppendUint32(b, crc32c(b[start:]))
}

// parseStreamHeader checks b (streamHeaderSize bytes) and returns the header
// and its CRC, which seeds the frame chain.
func parseStreamHeader(b []byte) (streamHeader, uint32, *FrameError) {
	var h streamHeader
	if [8]byte(b[:8]) != magic {
		return h, 0, frameErr(0, ErrBadMagic, "got %q", b[:8])
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return h, 0, frameErr(0, ErrBadVersion, "version %d, want %d", v, Version)
	}
	sum := binary.LittleEndian.Uint32(b[28:])
	if got := crc32c(b[:28]); got != sum {
		return h, 0, frameErr(0, ErrChecksum, "stream header crc %08x, computed %08x", sum, got)
	}
	h.flags = binary.LittleEndian.Uint16(b[10:])
	if h.flags != 0 {
		return h, 0, frameErr(0, ErrBadHeader, "unknown flags %#x", h.flags)
	}
	if ps := binary.LittleEndian.Uint32(b[12:]); ps != PageSize {
		return h, 0, frameErr(0, ErrBadHeader, "page size %d, want %d", ps, PageSize)
	}
	h.streamID = binary.LittleEndian.Uint64(b[16:])
	if r := binary.LittleEndian.Uint32(b[24:]); r != 0 {
		return h, 0, frameErr(0, ErrBadHeader, "reserved field %#x", r)
	}
	return h, sum, nil
}

// frameHeader is the fixed frameHeaderSize bytes at the start of a frame.
type frameHeader struct {
	kind       FrameKind
	codec      Codec
	flags      uint16
	round      uint32
	seq        uint64
	addr       uint64
	pages      uint32 // pages in the frame
	stored     uint32 // non-zero pages, whose bytes are in the payload
	payloadLen uint32
}

// put writes h with its CRC into b[:frameHeaderSize].
func (h *frameHeader) put(b []byte) {
	b = b[:frameHeaderSize]
	b[0] = byte(h.kind)
	b[1] = byte(h.codec)
	binary.LittleEndian.PutUint16(b[2:], h.flags)
	binary.LittleEndian.PutUint32(b[4:], h.round)
	binary.LittleEndian.PutUint64(b[8:], h.seq)
	binary.LittleEndian.PutUint64(b[16:], h.addr)
	binary.LittleEndian.PutUint32(b[24:], h.pages)
	binary.LittleEndian.PutUint32(b[28:], h.stored)
	binary.LittleEndian.PutUint32(b[32:], h.payloadLen)
	binary.LittleEndian.PutUint32(b[36:], crc32c(b[:36]))
}

func bitmapLen(pages int) int { return (pages + 7) / 8 }

// pagesPayloadLen is the payload length of a page frame stored without
// compression, and the cap for a compressed one.
func pagesPayloadLen(pages, stored uint32) uint32 {
	return uint32(bitmapLen(int(pages))) + contentCRCSize + stored*PageSize
}

// parseFrameHeader decodes and checks a frame header on its own: its CRC,
// known type and codec, reserved fields, and every length against its cap,
// so that nothing is allocated for a frame that cannot be valid. off is the
// frame's offset, for errors.
func parseFrameHeader(b []byte, off int64) (frameHeader, *FrameError) {
	var h frameHeader
	sum := binary.LittleEndian.Uint32(b[36:])
	if got := crc32c(b[:36]); got != sum {
		return h, frameErr(off, ErrChecksum, "frame header crc %08x, computed %08x", sum, got)
	}
	h.kind = FrameKind(b[0])
	h.codec = Codec(b[1])
	h.flags = binary.LittleEndian.Uint16(b[2:])
	h.round = binary.LittleEndian.Uint32(b[4:])
	h.seq = binary.LittleEndian.Uint64(b[8:])
	h.addr = binary.LittleEndian.Uint64(b[16:])
	h.pages = binary.LittleEndian.Uint32(b[24:])
	h.stored = binary.LittleEndian.Uint32(b[28:])
	h.payloadLen = binary.LittleEndian.Uint32(b[32:])

	if !h.codec.valid() {
		return h, frameErr(off, ErrUnknownCodec, "frame %d: codec %d", h.seq, h.codec)
	}
	if h.flags != 0 {
		return h, frameErr(off, ErrMalformed, "frame %d: unknown flags %#x", h.seq, h.flags)
	}
	switch h.kind {
	case FramePages:
		if h.pages > MaxFramePages {
			return h, frameErr(off, ErrFrameTooLarge, "frame %d: %d pages, at most %d", h.seq, h.pages, MaxFramePages)
		}
		if h.pages == 0 {
			return h, frameErr(off, ErrMalformed, "frame %d: no pages", h.seq)
		}
		if h.stored > h.pages {
			return h, frameErr(off, ErrMalformed, "frame %d: %d stored pages of %d", h.seq, h.stored, h.pages)
		}
		if h.addr%PageSize != 0 || h.addr > MaxAddress || uint64(h.pages)*PageSize > MaxAddress-h.addr {
			return h, frameErr(off, ErrBadAddress, "frame %d: %d pages at %#x", h.seq, h.pages, h.addr)
		}
		limit := pagesPayloadLen(h.pages, h.stored)
		if h.payloadLen > limit {
			return h, frameErr(off, ErrFrameTooLarge, "frame %d: payload %d bytes, at most %d", h.seq, h.payloadLen, limit)
		}
		// Uncompressed, the payload length is exact. Compressed, there must
		// be something to compress and the result must be smaller than the
		// pages (the writer stores them uncompressed otherwise).
		base := limit - h.stored*PageSize
		var bad bool
		if h.codec == CodecNone {
			bad = h.payloadLen != limit
		} else {
			bad = h.stored == 0 || h.payloadLen <= base || h.payloadLen >= limit
		}
		if bad {
			return h, frameErr(off, ErrMalformed, "frame %d: payload %d bytes with codec %v for %d stored pages", h.seq, h.payloadLen, h.codec, h.stored)
		}
	case FrameBarrier, FrameEnd:
		want := uint32(0)
		if h.kind == FrameEnd {
			want = endPayloadSize
			if h.round != 0 {
				return h, frameErr(off, ErrMalformed, "frame %d: end frame with round %d", h.seq, h.round)
			}
		}
		if h.payloadLen > want {
			return h, frameErr(off, ErrFrameTooLarge, "frame %d: %v frame payload %d bytes, want %d", h.seq, h.kind, h.payloadLen, want)
		}
		if h.payloadLen != want || h.codec != CodecNone || h.addr != 0 || h.pages != 0 || h.stored != 0 {
			return h, frameErr(off, ErrMalformed, "frame %d: %v frame with payload %d, codec %v, addr %#x, pages %d/%d",
				h.seq, h.kind, h.payloadLen, h.codec, h.addr, h.stored, h.pages)
		}
	default:
		return h, frameErr(off, ErrUnknownFrame, "frame %d: type %d", h.seq, h.kind)
	}
	return h, nil
}

// endTotals is the payload of the end frame.
type endTotals struct {
	frames    uint64 // frames before the end frame
	pages     uint64 // pages in all page frames
	zeroPages uint64 // of which all-zero
}

func (t endTotals) appendTo(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, t.frames)
	b = binary.LittleEndian.AppendUint64(b, t.pages)
	return binary.LittleEndian.AppendUint64(b, t.zeroPages)
}

func parseEndTotals(b []byte) endTotals {
	return endTotals{
		frames:    binary.LittleEndian.Uint64(b),
		pages:     binary.LittleEndian.Uint64(b[8:]),
		zeroPages: binary.LittleEndian.Uint64(b[16:]),
	}
}

// checkBitmap checks a wire zero bitmap of a frame of pages pages: no bits
// set past the last page, and exactly zero bits set.
func checkBitmap(bm []byte, pages, zero int) bool {
	n := 0
	for _, b := range bm {
		n += bits.OnesCount8(b)
	}
	if rem := pages % 8; rem != 0 && bm[len(bm)-1]>>rem != 0 {
		return false
	}
	return n == zero
}
