package source

import (
	"os"
	"testing"
)

func TestLabelReason(t *testing.T) {
	for _, c := range []struct {
		its, mine string
		refused   bool
	}{
		{"", "", false},
		{"unconfined", "unconfined", false},
		{"unconfined", "", false},
		{"runc-default (enforce)", "unconfined", true},
		{"system_u:system_r:container_t:s0:c1,c2", "unconfined_u:unconfined_r:unconfined_t:s0", true},
	} {
		if got := labelReason(c.its, c.mine) != ""; got != c.refused {
			t.Errorf("label %q under migrate's %q: refused %v, want %v", c.its, c.mine, got, c.refused)
		}
	}
}

// TestCheckSecurityLabel: migrate's own process, with migrate's label, is
// not refused for it.
func TestCheckSecurityLabel(t *testing.T) {
	if err := checkSecurityLabel(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
