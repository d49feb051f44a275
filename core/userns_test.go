package core

import "testing"

// TestUserNSValidate: maps the kernel would refuse (empty, a line of no
// IDs, overflowing, overlapping inside or outside, too many lines) and a
// setgroups other than allow or deny are refused; a user namespace
// without a PID namespace too; good ones pass, and Inside maps through
// them.
func TestUserNSValidate(t *testing.T) {
	good := []IDMap{{0, 100000, 65536}, {65536, 0, 1}}
	many := make([]IDMap, maxIDMaps+1)
	for i := range many {
		many[i] = IDMap{uint32(i), uint32(i), 1}
	}
	for _, tc := range []struct {
		name string
		u    UserNamespace
		ok   bool
	}{
		{"good", UserNamespace{UIDMap: good, GIDMap: good, SetGroups: "deny"}, true},
		{"setgroups", UserNamespace{UIDMap: good, GIDMap: good, SetGroups: "maybe"}, false},
		{"no uid map", UserNamespace{GIDMap: good, SetGroups: "allow"}, false},
		{"empty line", UserNamespace{UIDMap: []IDMap{{0, 0, 0}}, GIDMap: good, SetGroups: "allow"}, false},
		{"overflow", UserNamespace{UIDMap: []IDMap{{0, 1 << 31, 1 << 31}}, GIDMap: good, SetGroups: "allow"}, false},
		{"overlap inside", UserNamespace{UIDMap: []IDMap{{0, 0, 10}, {5, 100, 10}}, GIDMap: good, SetGroups: "allow"}, false},
		{"overlap outside", UserNamespace{UIDMap: good, GIDMap: []IDMap{{0, 100, 10}, {50, 105, 10}}, SetGroups: "allow"}, false},
		{"too many lines", UserNamespace{UIDMap: many, GIDMap: good, SetGroups: "allow"}, false},
	} {
		err := validateUserNS(&tc.u)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if err := validateNamespaces(&Image{Namespaces: &Namespaces{User: &UserNamespace{UIDMap: good, GIDMap: good, SetGroups: "deny"}}}); err == nil {
		t.Error("a user namespace without a PID namespace passed")
	}
	for _, c := range []struct {
		out, in uint32
		ok      bool
	}{{100000, 0, true}, {101000, 1000, true}, {165535, 65535, true}, {0, 65536, true}, {165536, 0, false}, {5, 0, false}} {
		if in, ok := Inside(good, c.out); in != c.in || ok != c.ok {
			t.Errorf("Inside(%d) = %d, %v; want %d, %v", c.out, in, ok, c.in, c.ok)
		}
	}
}
