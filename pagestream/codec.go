package pagestream

import "fmt"

// Codec says how the stored (non-zero) pages of a frame are compressed.
type Codec uint8

const (
	CodecNone Codec = 0 // stored as is
	CodecZstd Codec = 1 // one zstd frame (klauspost/compress/zstd)
	CodecS2   Codec = 2 // one s2 block (klauspost/compress/s2)
)

// DefaultCodec is the codec used when none is asked for.
//
// s2, measured with BenchmarkWriteRead (256 MiB of heap-like data, 2 cores):
// s2 writes about twice as fast as zstd at its fastest level (1.2-1.4 GB/s
// against 0.65-0.7 GB/s; 1.6 against 3.0 CPU-seconds per GiB), reads about
// as fast (2.3-2.9 GB/s against 2.3-2.6 GB/s), and its output is only 4%
// larger (ratio 0.46 against 0.44). Compression is what limits a dump, and
// on that data neither codec reaches the 3 GB/s a 400 ms/GiB dump would
// need; WriterOptions.Adaptive trades ratio for speed when the CPUs are the
// limit. zstd remains the choice for slow links, where bytes matter more
// than CPU.
const DefaultCodec = CodecS2

// ParseCodec parses a codec name as printed by Codec.String: "none", "zstd"
// or "s2". The empty string means DefaultCodec.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "":
		return DefaultCodec, nil
	case "none":
		return CodecNone, nil
	case "zstd":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	}
	return 0, fmt.Errorf("%w: %q (want none, zstd or s2)", ErrUnknownCodec, s)
}

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

func (c Codec) valid() bool { return c <= CodecS2 }
