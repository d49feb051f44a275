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
// s2, because of speed: on heap-like data (BenchmarkWriteRead, 2 cores) s2
// writes several times faster than zstd at its fastest level and decodes
// faster too, while zstd only compresses somewhat smaller. The page stream
// must keep up with reading memory (the target is 1 GiB in under 400 ms on
// two cores), which only s2 does; zstd remains the choice for slow links and
// for checkpoint files where size matters more than time.
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
