package kernel

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
)

func TestParseStatMM(t *testing.T) {
	data, err := os.ReadFile("testdata/stat-cat")
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseStatMM(data)
	if err != nil {
		t.Fatal(err)
	}
	want := raw.PrctlMMMap{
		StartCode: 94047439806464, EndCode: 94047439826345, StartStack: 140725110112512,
		StartData: 94047439842352, EndData: 94047439843968, StartBrk: 94047734308864,
		ArgStart: 140725110119088, ArgEnd: 140725110119108, EnvStart: 140725110119108, EnvEnd: 140725110120427,
	}
	if m != want {
		t.Errorf("got %+v\nwant %+v", m, want)
	}

	// A comm with spaces and parentheses must not shift the fields.
	tricky := strings.Replace(string(data), "(cat)", "(a) b (c))", 1)
	if m2, err := parseStatMM([]byte(tricky)); err != nil || m2 != want {
		t.Errorf("tricky comm: got %+v, %v", m2, err)
	}

	for _, bad := range []string{"", "1 (x) R 1 2", strings.Replace(string(data), "94047439806464", "x", 1)} {
		if _, err := parseStatMM([]byte(bad)); err == nil {
			t.Errorf("parseStatMM(%.30q) did not fail", bad)
		}
	}
}

func TestVDSOLayout(t *testing.T) {
	read := func(name string) VDSO {
		t.Helper()
		f, err := os.Open("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		maps, err := proc.ParseMaps(f)
		if err != nil {
			t.Fatal(err)
		}
		v, err := VDSOLayout(MapsAreas(maps))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v618 := read("maps-cat")
	if got, want := v618.String(), "[vvar] 0x4000 @-0x6000, [vvar_vclock] 0x2000 @-0x2000, [vdso] 0x2000 @+0x0"; got != want {
		t.Errorf("6.18 layout %q, want %q", got, want)
	}
	if v618.Anchor() != 0x7fec9d957000 || v618.Start() != 0x7fec9d951000 || v618.End() != 0x7fec9d959000 {
		t.Errorf("anchor/start/end %#x %#x %#x", v618.Anchor(), v618.Start(), v618.End())
	}
	old := read("maps-vvar-only")
	if got, want := old.String(), "[vvar] 0x4000 @-0x4000, [vdso] 0x2000 @+0x0"; got != want {
		t.Errorf("old layout %q, want %q", got, want)
	}

	// The same layout at another address is compatible; another layout
	// is not.
	moved := VDSO{}
	for _, a := range v618.Areas {
		moved.Areas = append(moved.Areas, Area{Name: a.Name, Start: a.Start + 0x100000, End: a.End + 0x100000})
	}
	if err := v618.Compatible(moved); err != nil {
		t.Errorf("moved layout: %v", err)
	}
	if err := v618.Compatible(old); !errors.Is(err, ErrVDSOMismatch) {
		t.Errorf("6.18 vs old: got %v, want ErrVDSOMismatch", err)
	}

	if _, err := VDSOLayout([]Area{{Name: "[vvar]", Start: 0x1000, End: 0x2000}}); err == nil {
		t.Error("[vvar] without [vdso] accepted")
	}
	if _, err := VDSOLayout([]Area{{Name: "[vdso]", Start: 0x1000, End: 0x2000}, {Name: "[vdso]", Start: 0x3000, End: 0x4000}}); err == nil {
		t.Error("two [vdso] accepted")
	}
	if v, err := VDSOLayout([]Area{{Name: "[heap]", Start: 0x1000, End: 0x2000}}); err != nil || !v.Empty() || v.String() != "no vdso" {
		t.Errorf("no vdso: %v %v", v, err)
	}
}

func TestFeatureStatusAndJSON(t *testing.T) {
	for _, c := range []struct {
		f      Feature
		status string
		json   string
	}{
		{Feature{Name: "a", OK: true, Detail: "d"}, "yes", `{"name":"a","ok":true,"status":"yes","detail":"d"}`},
		{Feature{Name: "b", Detail: "r", Err: &UnsupportedFeatureError{Name: "b", Reason: "r"}}, "no",
			`{"name":"b","ok":false,"status":"no","detail":"r","error":"b: not supported: r"}`},
		{Feature{Name: "c", Detail: "not probed", Err: ErrNotProbed}, "not probed",
			`{"name":"c","ok":false,"status":"not probed","detail":"not probed","error":"not probed"}`},
		{Feature{Name: "d", Detail: "probe failed: x", Err: errors.New("x")}, "unknown",
			`{"name":"d","ok":false,"status":"unknown","detail":"probe failed: x","error":"x"}`},
	} {
		if got := c.f.Status(); got != c.status {
			t.Errorf("%s: status %q, want %q", c.f.Name, got, c.status)
		}
		b, err := json.Marshal(c.f)
		if err != nil || string(b) != c.json {
			t.Errorf("%s: json %s (%v), want %s", c.f.Name, b, err, c.json)
		}
	}
}

func TestUnsupportedFeatureError(t *testing.T) {
	err := unsupported(FeatureTCPRepair, "setsockopt TCP_REPAIR", syscall.EPERM)
	if !errors.Is(err, ErrNotSupported) || !errors.Is(err, syscall.EPERM) {
		t.Errorf("%v: want ErrNotSupported and EPERM", err)
	}
	var uf *UnsupportedFeatureError
	if !errors.As(err, &uf) || uf.Name != FeatureTCPRepair {
		t.Errorf("errors.As: %#v", err)
	}
}

func TestHelperErrorErrno(t *testing.T) {
	_, err := parseAnswer("err errno=1 clone3 set_tid=5000: operation not permitted")
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("%v does not match EPERM", err)
	}
	if _, err := parseAnswer("err plain failure"); err == nil || errors.Is(err, syscall.EPERM) {
		t.Errorf("plain err answer: %v", err)
	}
	kv, err := parseAnswer("ok a=1 b=0x10")
	if err != nil || kv["a"] != "1" || kv["b"] != "0x10" {
		t.Errorf("ok answer: %v %v", kv, err)
	}
	if _, err := parseAnswer("what"); err == nil {
		t.Error("garbage answer accepted")
	}
}

func TestNextFreePID(t *testing.T) {
	self := os.Getpid()
	if got := nextFreePID(self, 1<<22); got == self || got < 0 {
		t.Errorf("nextFreePID(self) = %d", got)
	}
	// Wraps to the reserved range below pid_max.
	if got := nextFreePID(1000, 1000); got < 300 || got >= 1000 {
		t.Errorf("wrap: got %d", got)
	}
}
