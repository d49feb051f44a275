package pagestream

// This file is the only one that uses klauspost/compress. The options are
// chosen on purpose:
//
//   - Every frame is compressed on its own (zstd EncodeAll, one s2 block), so
//     frames can be compressed and decompressed in parallel and in any order.
//   - zstd encoders are made with WithEncoderConcurrency(1): parallelism comes
//     from our worker pool, one encoder per worker, not from goroutines
//     inside the library. WithEncoderCRC(false): the frame carries its own
//     CRC32C of the content, checked by the reader. WithSingleSegment(true):
//     the content size is in the zstd header, so the decoder knows the size
//     before it decodes. Encoders and decoders are pooled package-wide,
//     because making one costs far more than compressing a frame.
//   - zstd decoders are made with WithDecoderConcurrency(1) (one per worker),
//     WithDecoderMaxMemory and WithDecoderMaxWindow set to the largest frame,
//     and WithDecodeAllCapLimit, so that no input, however hostile, makes
//     them allocate more than one frame: the output buffer is sized by the
//     frame header and decoding must fill exactly that buffer.
//   - s2: the block length prefix is checked with s2.DecodedLen against the
//     size the frame header promises before anything is decoded, and the
//     output goes into our buffer of exactly that size.
//
// Levels: 0 is each codec's fastest. zstd takes zstd's levels 1..22, mapped
// by zstd.EncoderLevelFromZstd to klauspost's four speeds; s2 takes 1
// (s2.Encode), 2 (s2.EncodeBetter) and 3 (s2.EncodeBest).

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// maxLevel reports the highest level a codec accepts.
func maxLevel(c Codec) int {
	switch c {
	case CodecZstd:
		return 22
	case CodecS2:
		return 3
	}
	return 0
}

func checkLevel(c Codec, level int) error {
	if level < 0 || level > maxLevel(c) {
		return fmt.Errorf("pagestream: level %d out of range 0..%d for codec %v", level, maxLevel(c), c)
	}
	return nil
}

// zstdEncoders pools encoders by klauspost level (index 1..4).
var zstdEncoders [zstd.SpeedBestCompression + 1]sync.Pool

func zstdLevel(level int) zstd.EncoderLevel {
	if level == 0 {
		return zstd.SpeedFastest
	}
	return zstd.EncoderLevelFromZstd(level)
}

func getZstdEncoder(l zstd.EncoderLevel) *zstd.Encoder {
	if e, ok := zstdEncoders[l].Get().(*zstd.Encoder); ok {
		return e
	}
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderLevel(l),
		zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true),
	)
	if err != nil {
		// Only invalid options fail, and these are constant.
		panic("pagestream: zstd.NewWriter: " + err.Error())
	}
	return e
}

var zstdDecoders sync.Pool

func getZstdDecoder() *zstd.Decoder {
	if d, ok := zstdDecoders.Get().(*zstd.Decoder); ok {
		return d
	}
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(MaxFramePages*PageSize),
		zstd.WithDecoderMaxWindow(MaxFramePages*PageSize),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		panic("pagestream: zstd.NewReader: " + err.Error())
	}
	return d
}

// compressor compresses frames for one worker goroutine.
type compressor struct {
	codec Codec
	level int
	zenc  *zstd.Encoder // CodecZstd only
}

func newCompressor(c Codec, level int) *compressor {
	cp := &compressor{codec: c, level: level}
	if c == CodecZstd {
		cp.zenc = getZstdEncoder(zstdLevel(level))
	}
	return cp
}

// release returns pooled coders; the compressor must not be used again.
func (c *compressor) release() {
	if c.zenc != nil {
		zstdEncoders[zstdLevel(c.level)].Put(c.zenc)
		c.zenc = nil
	}
}

// compress appends the compressed form of src (not empty) to dst.
func (c *compressor) compress(dst, src []byte) []byte {
	switch c.codec {
	case CodecZstd:
		return c.zenc.EncodeAll(src, dst)
	case CodecS2:
		n := s2.MaxEncodedLen(len(src))
		if cap(dst)-len(dst) < n {
			grown := make([]byte, len(dst), len(dst)+n)
			copy(grown, dst)
			dst = grown
		}
		var enc []byte
		switch c.level {
		case 0, 1:
			enc = s2.Encode(dst[len(dst):cap(dst)], src)
		case 2:
			enc = s2.EncodeBetter(dst[len(dst):cap(dst)], src)
		default:
			enc = s2.EncodeBest(dst[len(dst):cap(dst)], src)
		}
		return dst[:len(dst)+len(enc)]
	}
	return append(dst, src...)
}

// decompressor decompresses frames for one worker goroutine.
type decompressor struct {
	zdec *zstd.Decoder
}

func (d *decompressor) release() {
	if d.zdec != nil {
		zstdDecoders.Put(d.zdec)
		d.zdec = nil
	}
}

// decompress decodes src into exactly dst: it fails unless src decodes to
// len(dst) bytes, and never writes outside dst or allocates for the output.
func (d *decompressor) decompress(c Codec, dst, src []byte) error {
	dst = dst[:len(dst):len(dst)]
	if len(dst) == 0 {
		// Nothing stored: the frame header checks allow only CodecNone here.
		if len(src) != 0 {
			return fmt.Errorf("%d bytes for no pages", len(src))
		}
		return nil
	}
	switch c {
	case CodecNone:
		if len(src) != len(dst) {
			return fmt.Errorf("%d bytes, want %d", len(src), len(dst))
		}
		copy(dst, src)
		return nil
	case CodecS2:
		n, err := s2.DecodedLen(src)
		if err != nil {
			return err
		}
		if n != len(dst) {
			return fmt.Errorf("s2 block of %d bytes, want %d", n, len(dst))
		}
		out, err := s2.Decode(dst, src)
		if err != nil {
			return err
		}
		if len(out) != len(dst) || &out[0] != &dst[0] {
			return fmt.Errorf("s2 decoded %d bytes, want %d", len(out), len(dst))
		}
		return nil
	case CodecZstd:
		// Ask the zstd header for the size first: one frame, single
		// segment, no dictionary, the exact size.
		var h zstd.Header
		if err := h.Decode(src); err != nil {
			return err
		}
		if h.Skippable || !h.SingleSegment || !h.HasFCS || h.DictionaryID != 0 || h.FrameContentSize != uint64(len(dst)) {
			return fmt.Errorf("zstd frame header (single segment %v, size %d known %v, dict %d), want %d bytes",
				h.SingleSegment, h.FrameContentSize, h.HasFCS, h.DictionaryID, len(dst))
		}
		if d.zdec == nil {
			d.zdec = getZstdDecoder()
		}
		out, err := d.zdec.DecodeAll(src, dst[:0])
		if err != nil {
			return err
		}
		if len(out) != len(dst) || &out[0] != &dst[0] {
			return fmt.Errorf("zstd decoded %d bytes, want %d", len(out), len(dst))
		}
		return nil
	}
	return fmt.Errorf("codec %v", c)
}
