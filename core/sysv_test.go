package core

import "testing"

// TestValidateShmPaged: a segment's contents are in a blob, or, Paged (a
// live migration's), in the page streams: then it names no blob.
func TestValidateShmPaged(t *testing.T) {
	img := func(s ShmSegment) *Image {
		i := validImage()
		i.Shm = []ShmSegment{s}
		return i
	}
	if err := validateShm(img(ShmSegment{ID: 3, Size: 100, Mode: 0o600, Paged: true})); err != nil {
		t.Errorf("paged segment refused: %v", err)
	}
	if err := validateShm(img(ShmSegment{ID: 3, Size: 3, Mode: 0o600, Data: "files/pipe-1"})); err != nil {
		t.Errorf("segment with its blob refused: %v", err)
	}
	for _, s := range []ShmSegment{
		{ID: 3, Size: 100, Mode: 0o600},                                  // no blob, not paged
		{ID: 3, Size: 3, Mode: 0o600, Paged: true, Data: "files/pipe-1"}, // both
	} {
		if err := validateShm(img(s)); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}
