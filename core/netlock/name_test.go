package netlock

import (
	"bytes"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want owner
		keep bool
		ok   bool
	}{
		{"migrate_1234_98765_1", owner{1234, 98765, 1}, false, true},
		{"migrate_1_0_0", owner{1, 0, 0}, false, true},
		{"migrate_4194304_18446744073709551615_7", owner{4194304, 1<<64 - 1, 7}, false, true},
		{"migrate_keep_0123456789abcdef", owner{}, true, true},

		{"migrate_keep_0123456789ABCDEF", owner{}, false, false},  // upper case
		{"migrate_keep_0123456789abcde", owner{}, false, false},   // short
		{"migrate_keep_0123456789abcdef0", owner{}, false, false}, // long
		{"migrate_keep_", owner{}, false, false},
		{"migrate_0_1_1", owner{}, false, false},                          // pid 0
		{"migrate_4194305_1_1", owner{}, false, false},                    // above PID_MAX_LIMIT
		{"migrate_01_1_1", owner{}, false, false},                         // leading zero
		{"migrate_+1_1_1", owner{}, false, false},                         // sign
		{"migrate_-1_1_1", owner{}, false, false},                         // sign
		{"migrate_1_18446744073709551616_1", owner{}, false, false},       // overflow
		{"migrate_1_2", owner{}, false, false},                            // too few fields
		{"migrate_1_2_3_4", owner{}, false, false},                        // too many
		{"migrate_1__3", owner{}, false, false},                           // empty field
		{"migrate_1_2_3 ", owner{}, false, false},                         // trailing space
		{"filter", owner{}, false, false},                                 // someone else's
		{"migrate", owner{}, false, false},                                // prefix only
		{"Migrate_1_2_3", owner{}, false, false},                          // case
		{"xmigrate_1_2_3", owner{}, false, false},                         // prefix inside
		{"migrate_1_2_0x3", owner{}, false, false},                        // hex
		{"migrate_keep_0123456789abcdef_1", owner{}, false, false},        // keep with extra
		{"migrate_1_2_3\x00", owner{}, false, false},                      // NUL
		{"migrate_1_2_" + strings.Repeat("9", 30), owner{}, false, false}, // long number
	} {
		o, keep, ok := parseName(tc.name)
		if o != tc.want || keep != tc.keep || ok != tc.ok {
			t.Errorf("parseName(%q) = %+v, %v, %v; want %+v, %v, %v", tc.name, o, keep, ok, tc.want, tc.keep, tc.ok)
		}
		if ok && !keep && o.name() != tc.name {
			t.Errorf("parseName(%q) does not print back: %q", tc.name, o.name())
		}
	}
}

func TestMadeNamesParse(t *testing.T) {
	o, err := self()
	if err != nil {
		t.Fatal(err)
	}
	if o.PID != os.Getpid() || o.Start == 0 {
		t.Fatalf("self() = %+v", o)
	}
	got, keep, ok := parseName(o.name())
	if !ok || keep || got != o {
		t.Fatalf("parseName(%q) = %+v, %v, %v", o.name(), got, keep, ok)
	}
	if !o.alive() {
		t.Errorf("%+v: this process is not alive", o)
	}
	if o2, _ := self(); o2.Seq == o.Seq || o2.name() == o.name() {
		t.Errorf("two locks of one process share a name: %s", o.name())
	}
	reused := o
	reused.Start++
	if reused.alive() {
		t.Errorf("%+v: a different start time must not count as alive", reused)
	}

	k1, err := keepName()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := keepName()
	if _, keep, ok := parseName(k1); !ok || !keep || k1 == k2 {
		t.Errorf("keep names %q, %q", k1, k2)
	}
}

func TestBuildElements(t *testing.T) {
	ap := netip.MustParseAddrPort
	e, err := buildElements(Spec{
		Conns: []Conn{
			{Local: ap("10.0.0.1:80"), Remote: ap("10.0.0.2:40000")},
			{Local: ap("[::ffff:10.0.0.1]:80"), Remote: ap("[::ffff:10.0.0.2]:40000")}, // same, mapped
			{Local: ap("[fe80::1%eth0]:22"), Remote: ap("[fe80::2%eth0]:50000")},
		},
		Listeners: []netip.AddrPort{
			ap("0.0.0.0:80"), ap("[::]:80"), // one port entry
			ap("[::ffff:127.0.0.1]:8080"),
			ap("[::1]:8081"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want4 := []byte{10, 0, 0, 2, 0x9c, 0x40, 0, 0, 10, 0, 0, 1, 0, 80, 0, 0}
	if len(e.conn4) != 1 || !bytes.Equal(e.conn4[0], want4) {
		t.Errorf("conn4 = %x, want [%x]", e.conn4, want4)
	}
	if len(e.conn6) != 1 || len(e.conn6[0]) != 40 || e.conn6[0][0] != 0xfe ||
		!bytes.Equal(e.conn6[0][16:20], []byte{0xc3, 0x50, 0, 0}) || e.conn6[0][35] != 1 ||
		!bytes.Equal(e.conn6[0][36:], []byte{0, 22, 0, 0}) {
		t.Errorf("conn6 = %x", e.conn6)
	}
	if len(e.listenPort) != 1 || !bytes.Equal(e.listenPort[0], []byte{0, 80}) {
		t.Errorf("listenport = %x", e.listenPort)
	}
	if len(e.listen4) != 1 || !bytes.Equal(e.listen4[0], []byte{127, 0, 0, 1, 0x1f, 0x90, 0, 0}) {
		t.Errorf("listen4 = %x", e.listen4)
	}
	if len(e.listen6) != 1 || len(e.listen6[0]) != 20 || e.listen6[0][15] != 1 {
		t.Errorf("listen6 = %x", e.listen6)
	}
	for _, k := range [][]byte{want4, e.conn6[0], e.listen4[0], e.listen6[0]} {
		if len(k)%4 != 0 {
			t.Errorf("key %x is not padded to registers", k)
		}
	}

	for _, bad := range []Spec{
		{Conns: []Conn{{Local: ap("10.0.0.1:80"), Remote: ap("[2001:db8::1]:4000")}}},
		{Conns: []Conn{{Local: ap("10.0.0.1:80")}}},
		{Conns: []Conn{{Local: ap("10.0.0.1:0"), Remote: ap("10.0.0.2:1")}}},
		{Conns: []Conn{{Local: ap("0.0.0.0:80"), Remote: ap("10.0.0.2:1")}}},
		{Listeners: []netip.AddrPort{ap("10.0.0.1:0")}},
		{Listeners: []netip.AddrPort{{}}},
	} {
		if _, err := buildElements(bad); err == nil {
			t.Errorf("buildElements(%+v) accepted", bad)
		}
	}
}

// FuzzParseName: table names come from the kernel's list of every table,
// anyone's. No name makes parseName panic, and every name it takes as ours
// is exactly one that Install makes: an owner's prints back to itself, a
// Keep name is the prefix and 16 lower-case hex digits.
func FuzzParseName(f *testing.F) {
	if o, err := self(); err == nil {
		f.Add(o.name())
	}
	if k, err := keepName(); err == nil {
		f.Add(k)
	}
	for _, s := range []string{"filter", "nat", "migrate_1_2_3", "migrate_keep_0123456789abcdef", "migrate_01_1_1", "migrate_1__3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		o, keep, ok := parseName(name)
		switch {
		case !ok:
			if keep || o != (owner{}) {
				t.Fatalf("parseName(%q) refused but returned %+v, keep %v", name, o, keep)
			}
		case keep:
			rest, found := strings.CutPrefix(name, keepPrefix)
			if !found || len(rest) != keepHexLen || strings.Trim(rest, "0123456789abcdef") != "" {
				t.Fatalf("parseName(%q) took a malformed Keep name", name)
			}
		default:
			if o.name() != name || o.PID <= 0 || o.PID > 1<<22 {
				t.Fatalf("parseName(%q) = %+v, which prints as %q", name, o, o.name())
			}
		}
	})
}
