package proc

import (
	"errors"
	"math"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadLimitsReal: /proc/self/limits says what getrlimit says, for
// every resource.
func TestReadLimitsReal(t *testing.T) {
	lims, err := ReadLimits(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(lims) < 16 {
		t.Fatalf("%d limits read, want 16", len(lims))
	}
	for res := range 16 {
		var want unix.Rlimit
		if err := unix.Getrlimit(res, &want); err != nil {
			t.Fatal(err)
		}
		if lims[res].Cur != want.Cur || lims[res].Max != want.Max {
			t.Errorf("resource %d: /proc says %+v, getrlimit %+v", res, lims[res], want)
		}
	}
}

func TestParseLimitsBad(t *testing.T) {
	hdr := "Limit                     Soft Limit           Hard Limit           Units     \n"
	good := hdr + "Max cpu time              unlimited            5                    seconds   \n"
	l, err := ParseLimits([]byte(good))
	if err != nil || len(l) != 1 || l[0].Cur != math.MaxUint64 || l[0].Max != 5 {
		t.Fatalf("got %+v, %v", l, err)
	}
	for _, bad := range []string{"short\n", "Max cpu time              unlimited\n", "Max cpu time              x                    5\n"} {
		if _, err := ParseLimits([]byte(hdr + bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want a ParseError", bad, err)
		}
	}
}

func FuzzParseLimits(f *testing.F) {
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseLimits(b); err != nil {
			checkErr(t, err)
		}
	})
}
