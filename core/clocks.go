package core

import (
	"errors"
	"fmt"
)

// Clocks are the clocks of the dumping host and of the processes' time
// namespace, read together at the freeze (in a live migration's layouts:
// as the layout was made). A restore elsewhere puts the processes in a
// time namespace whose offsets make their CLOCK_MONOTONIC and
// CLOCK_BOOTTIME go on from these readings (plus the real time that
// passed), not jump to the restoring host's values.
type Clocks struct {
	// BootID is /proc/sys/kernel/random/boot_id of the dumping host: a
	// restore on the same boot of the same host needs no clock arithmetic
	// (its clocks are these).
	BootID string `json:"boot_id"`
	// Realtime is CLOCK_REALTIME, in ns since the epoch.
	Realtime int64 `json:"realtime_ns"`
	// Monotonic and Boottime are the host's CLOCK_MONOTONIC and
	// CLOCK_BOOTTIME in ns: as its initial time namespace has them.
	Monotonic int64 `json:"monotonic_ns"`
	Boottime  int64 `json:"boottime_ns"`
	// Offsets are those of the processes' time namespace from the host's
	// clocks (/proc/PID/timens_offsets), zero outside any: a process sees
	// Monotonic + Offsets.Monotonic.
	Offsets TimeOffsets `json:"offsets"`
}

// TimeOffsets are the offsets of a time namespace, in ns.
type TimeOffsets struct {
	Monotonic int64 `json:"monotonic_ns"`
	Boottime  int64 `json:"boottime_ns"`
}

func (o TimeOffsets) String() string {
	return fmt.Sprintf("monotonic %+.9fs boottime %+.9fs", float64(o.Monotonic)/1e9, float64(o.Boottime)/1e9)
}

// MaxClockNS bounds the clock readings and offsets of an image: the
// kernel keeps a time namespace's clocks below KTIME_SEC_MAX/2 seconds
// (about 146 years).
const MaxClockNS = (1<<63 - 1) / 2

// Validate checks the readings are in the kernel's ranges.
func (c *Clocks) Validate() error {
	if len(c.BootID) > 64 {
		return errors.New("clocks: boot id too long")
	}
	for _, v := range []struct {
		name string
		ns   int64
		neg  bool
	}{
		{"realtime", c.Realtime, true}, {"monotonic", c.Monotonic, false}, {"boottime", c.Boottime, false},
		{"monotonic offset", c.Offsets.Monotonic, true}, {"boottime offset", c.Offsets.Boottime, true},
	} {
		if v.ns > MaxClockNS || v.ns < -MaxClockNS || (!v.neg && v.ns < 0) {
			return fmt.Errorf("clocks: %s %d ns out of range", v.name, v.ns)
		}
	}
	if m, b := c.Monotonic+c.Offsets.Monotonic, c.Boottime+c.Offsets.Boottime; m < 0 || b < 0 || m > MaxClockNS || b > MaxClockNS {
		return fmt.Errorf("clocks: the processes' clocks (monotonic %d ns, boottime %d ns) are out of range", m, b)
	}
	return nil
}
