package target

import (
	"errors"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
)

func TestPlanClocks(t *testing.T) {
	const s = int64(time.Second)
	src := core.Clocks{BootID: "a", Realtime: 1_000_000 * s, Monotonic: 500 * s, Boottime: 600 * s}
	for _, tc := range []struct {
		name string
		src  func(*core.Clocks)
		here hostClocks
		want core.TimeOffsets
		new  bool
	}{
		// Same boot: the host clocks are the image's, whatever realtime did.
		{"same boot", nil, hostClocks{BootID: "a", Now: rc(999_000*s, 510*s, 610*s)}, core.TimeOffsets{}, false},
		{"same boot, restorer in a namespace", nil,
			hostClocks{BootID: "a", Now: rc(1_000_010*s, 1510*s, -390*s+1000*s), Self: core.TimeOffsets{Monotonic: 1000 * s, Boottime: -1000 * s}},
			core.TimeOffsets{}, true},
		{"same boot, process in a namespace", func(c *core.Clocks) { c.Offsets = core.TimeOffsets{Monotonic: 7 * s, Boottime: -3 * s} },
			hostClocks{BootID: "a", Now: rc(1_000_010*s, 510*s, 610*s)}, core.TimeOffsets{Monotonic: 7 * s, Boottime: -3 * s}, true},
		// Another host, 10 s later by realtime: the clocks go on by 10 s.
		{"other host", nil, hostClocks{BootID: "b", Now: rc(1_000_010*s, 20*s, 30*s)},
			core.TimeOffsets{Monotonic: 490 * s, Boottime: 580 * s}, true},
		{"other host, restorer in a namespace", nil,
			hostClocks{BootID: "b", Now: rc(1_000_010*s, 1020*s, 30*s), Self: core.TimeOffsets{Monotonic: 1000 * s}},
			core.TimeOffsets{Monotonic: 490 * s, Boottime: 580 * s}, true},
		{"other host, process in a namespace", func(c *core.Clocks) { c.Offsets = core.TimeOffsets{Monotonic: 5 * s, Boottime: 5 * s} },
			hostClocks{BootID: "b", Now: rc(1_000_010*s, 20*s, 30*s)}, core.TimeOffsets{Monotonic: 495 * s, Boottime: 585 * s}, true},
		// Realtime behind the source's: no time passed, never backwards.
		{"other host, realtime behind", nil, hostClocks{BootID: "b", Now: rc(999_990*s, 20*s, 30*s)},
			core.TimeOffsets{Monotonic: 480 * s, Boottime: 570 * s}, true},
		// Within the tolerance of the restorer's own: no namespace.
		{"other host, clocks agree", nil, hostClocks{BootID: "b", Now: rc(1_000_001*s, 501*s+int64(clockTolerance)/2, 601*s)},
			core.TimeOffsets{Monotonic: -int64(clockTolerance) / 2}, false},
		{"other host, just beyond tolerance", nil, hostClocks{BootID: "b", Now: rc(1_000_001*s, 501*s+2*int64(clockTolerance), 601*s)},
			core.TimeOffsets{Monotonic: -2 * int64(clockTolerance)}, true},
		{"no boot id", func(c *core.Clocks) { c.BootID = "" }, hostClocks{Now: rc(1_000_000*s, 500*s, 600*s)}, core.TimeOffsets{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := src
			if tc.src != nil {
				tc.src(&c)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			p, err := planClocks(&c, tc.here)
			if err != nil {
				t.Fatal(err)
			}
			if p.Want != tc.want || p.New != tc.new {
				t.Errorf("offsets %v new %v, want %v new %v", p.Want, p.New, tc.want, tc.new)
			}
		})
	}
	// A realtime far ahead overflows no clock: refused.
	far := src
	far.Monotonic = core.MaxClockNS - s
	_, err := planClocks(&far, hostClocks{BootID: "b", Now: rc(core.MaxClockNS, 1, 1)})
	var te *TimeNamespaceError
	if !errors.As(err, &te) {
		t.Errorf("clock beyond the kernel's range: %v, want a TimeNamespaceError", err)
	}
}

func rc(real, mono, boot int64) (r struct{ Realtime, Monotonic, Boottime int64 }) {
	r.Realtime, r.Monotonic, r.Boottime = real, mono, boot
	return
}

func TestFormatTimeOffsets(t *testing.T) {
	for _, tc := range []struct {
		off  core.TimeOffsets
		want string
	}{
		{core.TimeOffsets{}, "1 0 0\n7 0 0\n"},
		{core.TimeOffsets{Monotonic: 1000 * int64(time.Second), Boottime: -1000 * int64(time.Second)}, "1 1000 0\n7 -1000 0\n"},
		{core.TimeOffsets{Monotonic: -1500 * int64(time.Millisecond), Boottime: 1}, "1 -2 500000000\n7 0 1\n"},
	} {
		if got := formatTimeOffsets(tc.off); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.off, got, tc.want)
		}
	}
}

func TestCheckCPU(t *testing.T) {
	const avx512 = 1<<5 | 1<<6 | 1<<7
	have := uint64(0x7) // x87, SSE, AVX
	if err := checkCPU(nil, have); err != nil {
		t.Errorf("no record: %v", err)
	}
	if err := checkCPU(&core.CPUFeatures{XCR0: 0x7, InUse: 0x6}, have); err != nil {
		t.Errorf("the same features: %v", err)
	}
	if err := checkCPU(&core.CPUFeatures{XCR0: 0x3, InUse: 0x2}, have); err != nil {
		t.Errorf("fewer features: %v", err)
	}
	var ce *CPUFeatureError
	err := checkCPU(&core.CPUFeatures{XCR0: 0x7 | avx512, InUse: 0x2 | avx512}, have)
	if !errors.As(err, &ce) || !ce.InUse || ce.Missing != "AVX-512" {
		t.Errorf("AVX-512 in use: %v, want a CPUFeatureError naming AVX-512 in use", err)
	}
	err = checkCPU(&core.CPUFeatures{XCR0: 0x7 | avx512 | 1<<9, InUse: 0x6}, have)
	if !errors.As(err, &ce) || ce.InUse || ce.Missing != "AVX-512, PKRU (protection keys)" {
		t.Errorf("AVX-512 and PKRU offered: %v, want a CPUFeatureError naming them, not in use", err)
	}
	err = checkCPU(&core.CPUFeatures{XCR0: 0x7, InUse: 1 << 19}, have)
	if !errors.As(err, &ce) || !ce.InUse || ce.Missing != "APX" {
		t.Errorf("APX in use: %v", err)
	}
}

func TestFitXstate(t *testing.T) {
	small := make([]byte, 832)
	small[0], small[512] = 0x7f, 0x7
	got, err := fitXstate(small, 2688)
	if err != nil || len(got) != 2688 || got[0] != 0x7f || got[512] != 0x7 || !zeroFrom(got, 832) {
		t.Errorf("grown to 2688: %d bytes, %v", len(got), err)
	}
	back, err := fitXstate(got, 832)
	if err != nil || len(back) != 832 || back[0] != 0x7f {
		t.Errorf("cut back to 832: %d bytes, %v", len(back), err)
	}
	got[2000] = 1 // a component the smaller area has no room for
	if _, err := fitXstate(got, 832); err == nil {
		t.Error("state beyond the smaller area was cut off")
	}
	if x, err := fitXstate(nil, 832); err != nil || x != nil {
		t.Errorf("no xstate: %v, %v", x, err)
	}
	if _, err := fitXstate(small, 100); err == nil {
		t.Error("an area smaller than the XSAVE header was taken")
	}
}

// A kernel without time namespaces restores a process whose clocks need
// no offsets (the same boot), and refuses, naming what is missing, one
// that needs them, with the offsets it needs; an image without clocks is refused.
func TestPlanTimeWithoutTimeNamespaces(t *testing.T) {
	const s = int64(time.Second)
	img := &core.Image{Clocks: &core.Clocks{BootID: "a", Realtime: 1000 * s, Monotonic: 50 * s, Boottime: 60 * s}}
	if p, err := planTime(img, hostClocks{BootID: "a", Now: rc(1001*s, 51*s, 61*s)}, false); err != nil || p.New {
		t.Errorf("same boot without time namespaces: %+v, %v", p, err)
	}
	_, err := planTime(img, hostClocks{BootID: "b", Now: rc(1001*s, 5*s, 6*s)}, false)
	var te *TimeNamespaceError
	if !errors.As(err, &te) || te.Offsets != (core.TimeOffsets{Monotonic: 46 * s, Boottime: 55 * s}) {
		t.Errorf("another host without time namespaces: %v, want a TimeNamespaceError with the offsets needed", err)
	}
	if p, err := planTime(img, hostClocks{BootID: "b", Now: rc(1001*s, 5*s, 6*s)}, true); err != nil || !p.New {
		t.Errorf("another host with time namespaces: %+v, %v", p, err)
	}
	if _, err := planTime(&core.Image{}, hostClocks{}, true); !errors.As(err, &te) {
		t.Errorf("an image without clocks: %v, want a TimeNamespaceError", err)
	}
}
