package proc

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const rw = unix.PROT_READ | unix.PROT_WRITE

func TestParseMapsTricky(t *testing.T) {
	maps, err := ParseMaps(bytes.NewReader(readTestdata(t, "hand/maps_tricky")))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{Start: 0x400000, End: 0x401000, Prot: unix.PROT_READ | unix.PROT_EXEC, Major: 0xfe, Inode: 1234, Path: "/usr/bin/a b  c"},
		{Start: 0x401000, End: 0x402000, Prot: rw, Offset: 0x1000, Major: 0xfe, Inode: 1234, Path: "/usr/bin/a b  c"},
		{Start: 0x7f0000000000, End: 0x7f0000002000, Prot: rw, Path: "[anon:my name]"},
		{Start: 0x7f0000002000, End: 0x7f0000003000, Prot: rw, Shared: true, Minor: 1, Inode: 77, Path: "[anon_shmem:shared thing]"},
		{Start: 0x7f0000003000, End: 0x7f0000007000, Prot: rw, Shared: true, Minor: 1, Inode: 1024, Path: "/memfd:x", Deleted: true},
		{Start: 0x7f0000007000, End: 0x7f0000008000, Prot: rw, Shared: true, Minor: 1, Inode: 5, Path: "/SYSV0000abcd", Deleted: true},
		{Start: 0x7f0000008000, End: 0x7f000000a000, Prot: rw, Shared: true, Minor: 1, Inode: 1026, Path: "/dev/zero", Deleted: true},
		{Start: 0x7f000000a000, End: 0x7f000000b000, Prot: unix.PROT_READ, Offset: 0x3000, Major: 0xfe, Inode: 99, Path: "/tmp/with space (deleted)", Deleted: true},
		{Start: 0x7f000000b000, End: 0x7f000000c000, Prot: unix.PROT_READ, Major: 0xfe, Inode: 98, Path: `/tmp/new\012line`},
		{Start: 0x7f000000c000, End: 0x7f000000d000, Prot: rw},
		{Start: 0x7f000000d000, End: 0x7f000000e000},
		{Start: 0x7f000000e000, End: 0x7f000000f000, Prot: unix.PROT_READ, Major: 0x103, Minor: 0x1f, Inode: 1<<64 - 1, Path: "/mnt/big inode"},
		{Start: 0x7f000000f000, End: 0x7f0000010000, Prot: rw, Shared: true, Minor: 0xe, Inode: 10, Path: "anon_inode:[perf_event]"},
		{Start: 0x7f0000010000, End: 0x7f0000014000, Prot: unix.PROT_READ, Path: "[vvar]"},
		{Start: 0x7f0000014000, End: 0x7f0000016000, Prot: unix.PROT_READ, Path: "[vvar_vclock]"},
		{Start: 0x7f0000016000, End: 0x7f0000018000, Prot: unix.PROT_READ | unix.PROT_EXEC, Path: "[vdso]"},
		{Start: 0x7ffc00000000, End: 0x7ffc00021000, Prot: rw, Path: "[stack]"},
		{Start: 0xffffffffff600000, End: 0xffffffffff601000, Prot: unix.PROT_EXEC, Path: "[vsyscall]"},
		{Start: 0x7f0000018000, End: 0x7f0000019000, Prot: rw},
	}
	if len(maps) != len(want) {
		t.Fatalf("got %d mappings, want %d", len(maps), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(maps[i], want[i]) {
			t.Errorf("mapping %d:\n got %+v\nwant %+v", i, maps[i], want[i])
		}
	}

	special := map[string]bool{"[vvar]": true, "[vvar_vclock]": true, "[vdso]": true, "[vsyscall]": true}
	for _, m := range maps {
		if m.IsSpecial() != special[m.Path] {
			t.Errorf("%s: IsSpecial() = %v", m.Path, m.IsSpecial())
		}
	}
	if name, ok := maps[2].AnonName(); !ok || name != "my name" {
		t.Errorf("AnonName of %s = %q, %v", maps[2].Path, name, ok)
	}
	if name, ok := maps[3].AnonName(); !ok || name != "shared thing" {
		t.Errorf("AnonName of %s = %q, %v", maps[3].Path, name, ok)
	}
	if _, ok := maps[0].AnonName(); ok {
		t.Errorf("AnonName of a file mapping is ok")
	}
	kinds := []struct {
		i                    int
		memfd, sysv, anonShm bool
	}{{4, true, false, false}, {5, false, true, false}, {6, false, false, true}, {0, false, false, false}}
	for _, k := range kinds {
		m := &maps[k.i]
		if m.IsMemfd() != k.memfd || m.IsSysVShm() != k.sysv || m.IsAnonShared() != k.anonShm {
			t.Errorf("%s: IsMemfd %v IsSysVShm %v IsAnonShared %v", m.Path, m.IsMemfd(), m.IsSysVShm(), m.IsAnonShared())
		}
	}
	if maps[0].Size() != 0x1000 {
		t.Errorf("Size = %#x", maps[0].Size())
	}
}

// TestParseMapsRecorded checks the maps and smaps recorded from
// testdata/record/record.c against each other and against what that program
// set up.
func TestParseMapsRecorded(t *testing.T) {
	maps, err := ParseMaps(bytes.NewReader(readTestdata(t, "recorded/maps")))
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := ParseSmaps(bytes.NewReader(readTestdata(t, "recorded/smaps")))
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != len(smaps) || len(maps) < 30 {
		t.Fatalf("%d mappings in maps, %d in smaps", len(maps), len(smaps))
	}
	for i := range maps {
		m, s := maps[i], smaps[i]
		if s.VmFlags == nil || m.VmFlags != nil {
			t.Errorf("mapping %d: VmFlags %v in maps, %v in smaps", i, m.VmFlags, s.VmFlags)
		}
		if s.KernelPageSize != 4096 || s.MMUPageSize != 4096 {
			t.Errorf("mapping %d: page sizes %d %d", i, s.KernelPageSize, s.MMUPageSize)
		}
		if s.Rss > s.Size() || s.Anonymous > s.Rss {
			t.Errorf("mapping %d: Rss %d Anonymous %d Size %d", i, s.Rss, s.Anonymous, s.Size())
		}
		// Apart from smaps data the two files agree.
		s.VmFlags, s.Rss, s.Anonymous, s.Swap, s.Pss = nil, 0, 0, 0, 0
		s.SharedClean, s.SharedDirty, s.PrivateClean, s.PrivateDirty = 0, 0, 0, 0
		s.Locked, s.AnonHugePages, s.KernelPageSize, s.MMUPageSize = 0, 0, 0, 0
		if !reflect.DeepEqual(m, s) {
			t.Errorf("mapping %d differs:\n maps %+v\nsmaps %+v", i, m, s)
		}
		if i > 0 && maps[i].Start < maps[i-1].End {
			t.Errorf("mapping %d overlaps the one before", i)
		}
	}

	find := func(pred func(*Mapping) bool) []*Mapping {
		var out []*Mapping
		for i := range smaps {
			if pred(&smaps[i]) {
				out = append(out, &smaps[i])
			}
		}
		return out
	}
	byPath := func(p string) []*Mapping { return find(func(m *Mapping) bool { return m.Path == p }) }
	one := func(what string, ms []*Mapping) *Mapping {
		t.Helper()
		if len(ms) != 1 {
			t.Fatalf("%s: %d mappings", what, len(ms))
		}
		return ms[0]
	}

	m := one("memfd", byPath("/memfd:x y"))
	if !m.Deleted || !m.Shared || !m.IsMemfd() || m.Prot != rw || m.Size() != 4*4096 || m.Minor != 1 {
		t.Errorf("memfd mapping %+v", m)
	}
	m = one("sysv", find((*Mapping).IsSysVShm))
	if m.Path != "/SYSV00000000" || m.Size() != 3*4096 || !m.HasFlag("sh") {
		t.Errorf("SysV mapping %+v", m)
	}
	zero := find((*Mapping).IsAnonShared)
	if len(zero) != 2 {
		t.Errorf("%d shared anonymous mappings, want 2 (MAP_SHARED|MAP_ANONYMOUS and /dev/zero)", len(zero))
	}
	m = one("deleted file", find(func(m *Mapping) bool { return strings.HasSuffix(m.Path, "/gone file (x)") }))
	if !m.Deleted || m.Shared || m.Offset != 4096 || m.Anonymous != 4096 {
		t.Errorf("deleted file mapping %+v", m)
	}
	m = one("file with spaces", find(func(m *Mapping) bool { return strings.HasSuffix(m.Path, "/map with  spaces") }))
	if !m.Deleted || !m.Shared || m.Prot != unix.PROT_READ {
		t.Errorf("file with spaces %+v", m)
	}
	for _, name := range []string{"[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"} {
		if m := one(name, byPath(name)); !m.IsSpecial() {
			t.Errorf("%s not special", name)
		}
	}
	for _, flag := range []string{"dd", "dc", "wf", "hg", "nh", "gd", "lo"} {
		if len(find(func(m *Mapping) bool { return m.HasFlag(flag) && m.Path == "" })) == 0 {
			t.Errorf("no anonymous mapping has VmFlag %s", flag)
		}
	}
	m = one("rwx", find(func(m *Mapping) bool { return m.Prot == rw|unix.PROT_EXEC }))
	if m.Path != "" || m.Rss != 4096 || m.Anonymous != 4096 || m.PrivateDirty != 4096 {
		t.Errorf("rwx mapping %+v", m)
	}
	m = one("locked", find(func(m *Mapping) bool { return m.HasFlag("lo") }))
	if m.Locked != m.Size() {
		t.Errorf("locked mapping: Locked %d, size %d", m.Locked, m.Size())
	}
	libc := byPath("/usr/lib/x86_64-linux-gnu/libc.so.6")
	if len(libc) < 4 {
		t.Fatalf("%d libc mappings", len(libc))
	}
	// Consecutive mappings of one file share the path string.
	if raw.StringAddr(libc[0].Path) != raw.StringAddr(libc[1].Path) {
		t.Errorf("libc path strings not shared")
	}
}

func TestParseSmapsTricky(t *testing.T) {
	maps, err := ParseSmaps(bytes.NewReader(readTestdata(t, "hand/smaps_tricky")))
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 3 {
		t.Fatalf("%d mappings", len(maps))
	}
	h := maps[0]
	if h.KernelPageSize != 2<<20 || h.MMUPageSize != 2<<20 || !h.HasFlag("ht") || h.Path != "/dev/hugepages/x" || !h.Deleted {
		t.Errorf("hugetlb mapping %+v", h)
	}
	a := maps[1]
	wantFlags := []string{"rd", "wr", "mr", "mw", "me", "ac", "sd", "dc", "dd", "wf", "gd", "zz"}
	if !reflect.DeepEqual(a.VmFlags, wantFlags) {
		t.Errorf("VmFlags %q, want %q", a.VmFlags, wantFlags)
	}
	if a.Rss != 12<<10 || a.Anonymous != 12<<10 || a.Swap != 8<<10 || a.PrivateDirty != 12<<10 || a.ProtectionKey != 5 {
		t.Errorf("anon mapping %+v", a)
	}
	for _, f := range wantFlags {
		if !a.HasFlag(f) {
			t.Errorf("HasFlag(%q) false", f)
		}
	}
	if a.HasFlag("ht") || a.HasFlag("") {
		t.Errorf("HasFlag true for an absent flag")
	}
	if maps[2].VmFlags != nil {
		t.Errorf("mapping without VmFlags line has %q", maps[2].VmFlags)
	}
}

func TestParseMapsErrors(t *testing.T) {
	good := "00400000-00401000 r-xp 00000000 fe:00 1234 /bin/x\n"
	tests := []struct {
		name, text, field string
		line              int
	}{
		{"no dash", "00400000 r-xp 00000000 fe:00 1234 /bin/x\n", "address", 1},
		{"bad hex", "0040z000-00401000 r-xp 00000000 fe:00 1234\n", "address", 1},
		{"end below start", "00402000-00401000 r-xp 00000000 fe:00 1234\n", "address", 1},
		{"empty range", "00401000-00401000 r-xp 00000000 fe:00 1234\n", "address", 1},
		{"overflow", "10000000000000000-20000000000000000 r-xp 00000000 fe:00 1234\n", "address", 1},
		{"perms short", "00400000-00401000 r-x 00000000 fe:00 1234\n", "perms", 1},
		{"perms letter", "00400000-00401000 rwzp 00000000 fe:00 1234\n", "perms", 1},
		{"perms share", "00400000-00401000 rwxq 00000000 fe:00 1234\n", "perms", 1},
		{"perms order", "00400000-00401000 wrxp 00000000 fe:00 1234\n", "perms", 1},
		{"offset", "00400000-00401000 r-xp 0000g000 fe:00 1234\n", "offset", 1},
		{"dev no colon", "00400000-00401000 r-xp 00000000 fe00 1234\n", "dev", 1},
		{"dev too big", "00400000-00401000 r-xp 00000000 100000000:00 1234\n", "dev", 1},
		{"inode", "00400000-00401000 r-xp 00000000 fe:00 12a4\n", "inode", 1},
		{"inode missing", "00400000-00401000 r-xp 00000000 fe:00\n", "inode", 1},
		{"second line", good + "garbage\n", "address", 2},
		{"blank line", good + "\n" + good, "address", 2},
		{"smaps field in maps", good + "Rss: 4 kB\n", "address", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseMaps(strings.NewReader(tt.text))
			checkParseError(t, err, "maps", tt.line, tt.field)
		})
	}
	smapsTests := []struct {
		name, text, field string
		line              int
	}{
		{"field first", "Rss: 4 kB\n" + good, "address", 1},
		{"bad number", good + "Rss: 4x kB\n", "Rss", 2},
		{"bad unit", good + "Swap: 4 MB\n", "Swap", 2},
		{"no unit", good + "Anonymous: 4\n", "Anonymous", 2},
		{"too big", good + "Rss: 18446744073709551615 kB\n", "Rss", 2},
	}
	for _, tt := range smapsTests {
		t.Run("smaps "+tt.name, func(t *testing.T) {
			_, err := ParseSmaps(strings.NewReader(tt.text))
			checkParseError(t, err, "smaps", tt.line, tt.field)
		})
	}
}

func checkParseError(t *testing.T, err error, file string, line int, field string) {
	t.Helper()
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T), want *ParseError", err, err)
	}
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("error does not match ErrMalformed")
	}
	if pe.File != file || pe.Line != line || pe.Field != field {
		t.Errorf("error names %s:%d field %q, want %s:%d field %q (%v)", pe.File, pe.Line, pe.Field, file, line, field, err)
	}
}

func TestParseMapsEmpty(t *testing.T) {
	maps, err := ParseMaps(strings.NewReader(""))
	if err != nil || len(maps) != 0 {
		t.Errorf("empty maps: %v, %v", maps, err)
	}
}

func BenchmarkParseSmaps(b *testing.B) {
	data := readTestdata(b, "recorded/smaps")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseMaps(data, "smaps", true); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseMaps(b *testing.B) {
	data := readTestdata(b, "recorded/maps")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseMaps(data, "maps", false); err != nil {
			b.Fatal(err)
		}
	}
}
