package target

import "testing"

func TestCapList(t *testing.T) {
	for _, tc := range []struct {
		mask uint64
		want string
	}{
		{0, ""},
		{1 << 24, "CAP_SYS_RESOURCE"},
		{1<<0 | 1<<40, "CAP_CHOWN, CAP_CHECKPOINT_RESTORE"},
		{1 << 41, "capability 41"},
	} {
		if got := capList(tc.mask); got != tc.want {
			t.Errorf("capList(%#x) = %q, want %q", tc.mask, got, tc.want)
		}
	}
}
