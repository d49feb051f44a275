package source

import (
	"errors"
	"testing"

	"github.com/procmig/migrate/core/proc"
)

// TestRefuseMapping: the areas a restore cannot give back as they were are
// refused with an *UnsupportedMappingError naming the area; others pass.
// (Shadow stacks and protection keys need CPU features that the e2e
// machines may lack: this checks the decision on smaps values.)
func TestRefuseMapping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		m      proc.Mapping
		refuse bool
	}{
		{"anon", proc.Mapping{Path: "", VmFlags: []string{"rd", "wr", "lo"}}, false},
		{"memfd", proc.Mapping{Path: "/memfd:x", Deleted: true, Shared: true}, false},
		{"shared anon", proc.Mapping{Path: "/dev/zero", Deleted: true, Shared: true}, false},
		{"hugetlb anon from maps", proc.Mapping{Path: "/anon_hugepage", Deleted: true}, true},
		{"hugetlbfs file", proc.Mapping{Path: "/dev/hugepages/x", Shared: true, VmFlags: []string{"rd", "sh", "ht"}}, true},
		{"System V (dump carries it; live refuses it: refuseDeletedMappings)", proc.Mapping{Path: "/SYSV00000000", Deleted: true, Shared: true}, false},
		{"shadow stack", proc.Mapping{VmFlags: []string{"rd", "ss"}}, true},
		{"protection key", proc.Mapping{ProtectionKey: 1}, true},
	} {
		tc.m.Start, tc.m.End = 0x10000, 0x20000
		err := refuseMapping(42, &tc.m)
		var ue *UnsupportedMappingError
		switch {
		case tc.refuse && !(errors.As(err, &ue) && ue.PID == 42 && ue.Start == 0x10000 && ue.End == 0x20000):
			t.Errorf("%s: %v, want an UnsupportedMappingError naming the area", tc.name, err)
		case !tc.refuse && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		}
	}
}
