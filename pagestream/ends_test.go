package pagestream

import (
	"bytes"
	"errors"
	"testing"
)

// TestCheckEnds: a whole stream passes with its totals; one cut short, even
// by a byte, or with bytes after its end frame, fails with ErrTruncated;
// a flipped byte in the middle is left to the Reader.
func TestCheckEnds(t *testing.T) {
	s, st := writeStream(t, WriterOptions{Codec: CodecS2, StreamID: 1}, smallOps())
	got, err := CheckEnds(bytes.NewReader(s), int64(len(s)))
	if err != nil {
		t.Fatalf("CheckEnds of a whole stream: %v", err)
	}
	if got.Frames != st.Frames || got.Pages != st.Pages || got.ZeroPages != st.ZeroPages {
		t.Errorf("CheckEnds says %+v, the Writer wrote %+v", got, st)
	}
	for _, n := range []int{0, 10, streamHeaderSize, len(s) / 2, len(s) - 1} {
		if _, err := CheckEnds(bytes.NewReader(s[:n]), int64(n)); !errors.Is(err, ErrTruncated) {
			t.Errorf("stream cut to %d of %d bytes: %v, want ErrTruncated", n, len(s), err)
		}
	}
	long := append(bytes.Clone(s), 0, 0, 0, 0)
	if _, err := CheckEnds(bytes.NewReader(long), int64(len(long))); !errors.Is(err, ErrTruncated) {
		t.Errorf("stream with bytes after its end: %v, want ErrTruncated", err)
	}
	bad := bytes.Clone(s)
	bad[0] ^= 1
	if _, err := CheckEnds(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, ErrBadMagic) {
		t.Errorf("bad magic: %v, want ErrBadMagic", err)
	}
}
