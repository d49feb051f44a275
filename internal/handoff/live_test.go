package handoff

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
)

// TestLiveLayoutSingleProcess: the layout of a single process is what it
// was before trees moved (no "tree" key), and a layout from a peer that
// knows nothing of trees decodes with no tree.
func TestLiveLayoutSingleProcess(t *testing.T) {
	b, err := json.Marshal(LiveLayout{Process: core.Process{PID: 7, Comm: "x"}, FDs: 3})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"tree"`) {
		t.Errorf("a single process's layout names a tree: %s", b)
	}
	old := `{"process":{"pid":7,"ppid":1,"comm":"x"},"fds":3}`
	var ll LiveLayout
	if err := json.Unmarshal([]byte(old), &ll); err != nil {
		t.Fatal(err)
	}
	if ll.Process.PID != 7 || ll.FDs != 3 || ll.Tree != nil {
		t.Errorf("an older peer's layout decodes as %+v", ll)
	}
	// A tree's other processes go with it.
	b, err = json.Marshal(LiveLayout{Process: core.Process{PID: 7}, Tree: []core.Process{{PID: 8, PPID: 7}}})
	if err != nil {
		t.Fatal(err)
	}
	ll = LiveLayout{}
	if err := json.Unmarshal(b, &ll); err != nil {
		t.Fatal(err)
	}
	if len(ll.Tree) != 1 || ll.Tree[0].PID != 8 || ll.Tree[0].PPID != 7 {
		t.Errorf("a tree's layout decodes as %+v", ll)
	}
}

// sameProcs are two processes and a zombie, with areas of every kind of
// detail LeaveOutSame must compare: a file, advice, a vdso's code.
func sameProcs() []core.Process {
	areas := func() []core.VMA {
		return []core.VMA{
			{Start: 0x1000, End: 0x3000, Prot: 5, Flags: 2, Kind: core.VMAFile, Offset: 0x1000,
				File: &core.FileRef{Path: "/usr/bin/x", Size: 9, SHA256: "ab", Extents: []core.Extent{{Off: 0, Len: 9}}}},
			{Start: 0x5000, End: 0x9000, Prot: 3, Flags: 2, Kind: core.VMAAnon, Madvise: []int{10}, Pages: 2},
			{Start: 0xa000, End: 0xb000, Prot: 5, Flags: 2, Kind: core.VMAVDSO, Name: "[vdso]", Hash: "cd", Code: []byte("elf")},
		}
	}
	return []core.Process{{PID: 7, VMAs: areas()}, {PID: 8, PPID: 7, VMAs: areas()}, {PID: 9, PPID: 7, Zombie: &core.Zombie{}}}
}

func procPtrs(ps []core.Process) []*core.Process {
	var out []*core.Process
	for i := range ps {
		out = append(out, &ps[i])
	}
	return out
}

// TestSameVMAs: the areas a layout or the State leaves out because they
// are those of the layout before (but for their page counts) come back
// exactly as they were, through JSON, from the target's copy of that
// layout; those that changed in any detail go whole.
func TestSameVMAs(t *testing.T) {
	before := sameProcs()
	prev := AreasOf(procPtrs(before))
	// The source changes its processes after the layout was made: its
	// copies stay as sent.
	before[0].VMAs[1].Madvise[0] = 11
	before[0].VMAs[0].File.SHA256 = "ef"
	if prev[7][1].Madvise[0] != 10 || prev[7][0].File.SHA256 != "ab" {
		t.Fatal("AreasOf's copy shares the areas' details")
	}

	now := sameProcs()
	now[0].VMAs[1].Pages = 4 // only the page count: left out
	now[1].VMAs[2].Code = []byte("elg")
	want := sameProcs()
	want[0].VMAs[1].Pages = 4
	want[1].VMAs[2].Code = []byte("elg")
	ll := LiveLayout{Process: now[0], Tree: now[1:]}
	ll.SameVMAs = LeaveOutSame(append([]*core.Process{&ll.Process}, procPtrs(ll.Tree)...), prev)
	if len(ll.SameVMAs) != 1 || ll.SameVMAs[0].PID != 7 || ll.Process.VMAs != nil || len(ll.Tree[0].VMAs) != 3 {
		t.Fatalf("left out %+v, want process 7's only (a changed vdso's go whole)", ll.SameVMAs)
	}
	b, err := json.Marshal(ll)
	if err != nil {
		t.Fatal(err)
	}
	var got LiveLayout
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	procs := append([]*core.Process{&got.Process}, procPtrs(got.Tree)...)
	if err := FillSame(procs, got.SameVMAs, prev); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Process.VMAs, want[0].VMAs) || !reflect.DeepEqual(got.Tree[0].VMAs, want[1].VMAs) {
		t.Errorf("filled in:\n%+v\n%+v\nwant\n%+v\n%+v", got.Process.VMAs, got.Tree[0].VMAs, want[0].VMAs, want[1].VMAs)
	}
	got.Process.VMAs[0].File.Path = "/elsewhere"
	if prev[7][0].File.Path != "/usr/bin/x" {
		t.Error("the filled-in areas share the target's copy")
	}
}

// TestFillSameRefuses: an entry that does not fit the layout, or the one
// before, is refused.
func TestFillSameRefuses(t *testing.T) {
	prev := AreasOf(procPtrs(sameProcs()))
	three := []uint64{0, 0, 0}
	for name, same := range map[string][]SameVMAs{
		"not listed":     {{PID: 99, Pages: three}},
		"twice":          {{PID: 7, Pages: three}, {PID: 7, Pages: three}},
		"zombie":         {{PID: 9}},
		"lists areas":    {{PID: 8, Pages: three}},
		"not before":     {{PID: 10, Pages: three}},
		"too few pages":  {{PID: 7, Pages: three[:2]}},
		"too many pages": {{PID: 7, Pages: append(three, 0)}},
	} {
		ps := sameProcs()
		ps[0].VMAs = nil
		ps = append(ps, core.Process{PID: 10, PPID: 7})
		if err := FillSame(procPtrs(ps), same, prev); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ps := sameProcs()
	ps[0].VMAs = nil
	if err := FillSame(procPtrs(ps), []SameVMAs{{PID: 7, Pages: three}}, nil); err == nil {
		t.Error("areas left out of a first layout accepted")
	}
}

// TestSameAreaFields: sameArea tells apart two areas that differ in any
// one field but the page count, whatever fields core.VMA and core.FileRef
// have (a field added to them and not compared fails here), and a nil
// slice from an empty one, as reflect.DeepEqual does.
func TestSameAreaFields(t *testing.T) {
	base := func() core.VMA {
		return core.VMA{File: &core.FileRef{Extents: []core.Extent{{}}}}
	}
	// differ sets field i of v (a struct) to a value other than base's.
	differ := func(v reflect.Value, i int) {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Int, reflect.Int32, reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Uint, reflect.Uint32, reflect.Uint64:
			f.SetUint(f.Uint() + 1)
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Slice:
			f.Set(reflect.Append(f, reflect.Zero(f.Type().Elem())))
		case reflect.Pointer:
			f.Set(reflect.Zero(f.Type()))
		default:
			t.Fatalf("field %s of kind %v: teach this test and sameArea about it", v.Type().Field(i).Name, f.Kind())
		}
	}
	x := base()
	if y := base(); !sameArea(&x, &y) {
		t.Fatal("an area is not the same as its copy")
	}
	vt := reflect.TypeFor[core.VMA]()
	for i := range vt.NumField() {
		y := base()
		differ(reflect.ValueOf(&y).Elem(), i)
		if got := sameArea(&x, &y); got != (vt.Field(i).Name == "Pages") {
			t.Errorf("areas that differ in %s: same = %v", vt.Field(i).Name, got)
		}
	}
	ft := reflect.TypeFor[core.FileRef]()
	for i := range ft.NumField() {
		y := base()
		differ(reflect.ValueOf(y.File).Elem(), i)
		if sameArea(&x, &y) {
			t.Errorf("areas whose files differ in %s: the same", ft.Field(i).Name)
		}
	}
	et := reflect.TypeFor[core.Extent]()
	for i := range et.NumField() {
		y := base()
		differ(reflect.ValueOf(&y.File.Extents[0]).Elem(), i)
		if sameArea(&x, &y) {
			t.Errorf("areas whose files' extents differ in %s: the same", et.Field(i).Name)
		}
	}
	y := base()
	y.Madvise = []int{}
	if sameArea(&x, &y) {
		t.Error("nil advice and empty advice: the same")
	}
}

// CloneVMAs copies deeply: the clone equals the original, and nothing
// written through the clone (its file references, their extents, advice,
// code) shows in the original.
func TestCloneVMAsDeep(t *testing.T) {
	orig := []core.VMA{
		{Start: 0x1000, End: 0x2000, Kind: core.VMAFile, File: &core.FileRef{Path: "/lib/a.so", Size: 7, Extents: []core.Extent{{Off: 0, Len: 7}}}, Madvise: []int{1}},
		{Start: 0x2000, End: 0x3000, Kind: core.VMAAnon},
		{Start: 0x3000, End: 0x4000, Kind: core.VMAFile, File: &core.FileRef{Path: "/lib/b.so"}, Code: []byte{1, 2}},
		{Start: 0x4000, End: 0x5000, Kind: core.VMAFile, Madvise: []int{}},
	}
	c := CloneVMAs(orig)
	if !reflect.DeepEqual(c, orig) {
		t.Fatalf("clone %+v, want %+v", c, orig)
	}
	c[0].File.Path = "/lib/changed.so"
	c[0].File.Extents[0].Len = 99
	c[0].Madvise[0] = 9
	c[2].Code[0] = 9
	c[2].File.Size = 99
	if orig[0].File.Path != "/lib/a.so" || orig[0].File.Extents[0].Len != 7 || orig[0].Madvise[0] != 1 || orig[2].Code[0] != 1 || orig[2].File.Size != 0 {
		t.Errorf("a write through the clone shows in the original: %+v %+v", orig[0], orig[2])
	}
	if c[1].File != nil || c[3].Madvise == nil || c[1].Madvise != nil {
		t.Errorf("nil and empty slices or references not kept as they were: %+v %+v", c[1], c[3])
	}
}
