package pagestream

import (
	"bytes"
	"errors"
	"testing"
)

func TestVerify(t *testing.T) {
	data := make([]byte, 600*PageSize)
	for i := range data {
		if (i/PageSize)%3 != 0 { // every third page stays zero
			data[i] = byte(i * 7 / PageSize)
		}
	}
	ops := []op{{0, 0x10000, data}, {round: 0}, {1, 0x10000, data[:10*PageSize]}, {round: 1}}
	for _, c := range allCodecs {
		stream, st := writeStream(t, WriterOptions{Codec: c}, ops)
		got, err := Verify(bytes.NewReader(stream))
		if err != nil {
			t.Fatalf("%v: Verify of a good stream: %v", c, err)
		}
		if got.Pages != st.Pages || got.ZeroPages != st.ZeroPages {
			t.Errorf("%v: Verify counted %d pages (%d zero), the writer %d (%d)", c, got.Pages, got.ZeroPages, st.Pages, st.ZeroPages)
		}
		// A flipped byte anywhere, and a cut anywhere, are caught without
		// decompressing.
		for _, at := range []int{0, 20, len(stream) / 3, len(stream) / 2, len(stream) - 5} {
			bad := bytes.Clone(stream)
			bad[at] ^= 0x40
			if _, err := Verify(bytes.NewReader(bad)); err == nil {
				t.Errorf("%v: flipped byte at %d of %d passed Verify", c, at, len(stream))
			}
			if _, err := Verify(bytes.NewReader(stream[:at])); !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadMagic) {
				t.Errorf("%v: stream cut at %d: %v, want ErrTruncated", c, at, err)
			}
		}
	}
}
