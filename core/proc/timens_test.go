package proc

import (
	"errors"
	"testing"
)

func TestParseTimeOffsets(t *testing.T) {
	o, err := ParseTimeOffsets([]byte("monotonic        1000         0\nboottime        -1001 500000000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Monotonic != 1000e9 || o.Boottime != -1001e9+5e8 {
		t.Errorf("offsets %+v", o)
	}
	for _, bad := range []string{"monotonic 1\n", "monotonic 1 1000000000\n", "realtime 1 0\n", "monotonic x 0\n", "monotonic 99999999999999 0\n"} {
		if _, err := ParseTimeOffsets([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", bad, err)
		}
	}
}

func TestReadTimeOffsetsSelf(t *testing.T) {
	if _, err := ReadTimeOffsets(0); err != nil {
		t.Fatal(err)
	}
	c, err := ReadClocks()
	if err != nil || c.Monotonic <= 0 || c.Boottime < c.Monotonic || c.Realtime <= 0 {
		t.Errorf("clocks %+v, %v", c, err)
	}
}

func FuzzParseTimeOffsets(f *testing.F) {
	f.Add([]byte("monotonic        1000         0\nboottime        -1001 500000000\n"))
	f.Add([]byte("monotonic 0 0\nboottime 0 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseTimeOffsets(data)
		checkErr(t, err)
		if err == nil && (o.Monotonic < -maxOffsetSec*1e9 || o.Boottime < -maxOffsetSec*1e9) {
			t.Fatalf("offset %d out of range", o.Monotonic)
		}
	})
}
