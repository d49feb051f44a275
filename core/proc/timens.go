package proc

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// TimeOffsets are the offsets of a time namespace from the host's clocks,
// in ns, as /proc/PID/timens_offsets shows them.
type TimeOffsets struct {
	Monotonic, Boottime int64
}

// maxOffsetSec bounds an offset's seconds: the kernel keeps them within
// KTIME_SEC_MAX.
const maxOffsetSec = (1<<63 - 1) / int64(time.Second)

// ReadTimeOffsets reads /proc/PID/timens_offsets (pid 0: migrate's own):
// zero offsets on a kernel without time namespaces (no such file).
func ReadTimeOffsets(pid int) (TimeOffsets, error) {
	path := Root + "/self/timens_offsets"
	if pid != 0 {
		path = pidPath(pid, "timens_offsets")
	}
	b, err := readFile(path, 128)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := readFile(Root+"/self/timens_offsets", 128); errors.Is(serr, fs.ErrNotExist) {
			return TimeOffsets{}, nil
		}
	}
	if err != nil {
		return TimeOffsets{}, err
	}
	return ParseTimeOffsets(b)
}

// ParseTimeOffsets parses timens_offsets: a line per clock, "monotonic
// SECONDS NANOSECONDS", "boottime ...".
func ParseTimeOffsets(b []byte) (TimeOffsets, error) {
	var o TimeOffsets
	for no := 1; len(b) > 0; no++ {
		var line []byte
		line, b = cutLine(b)
		if len(line) == 0 {
			continue
		}
		f := strings.Fields(string(line))
		bad := func(field string, err error) error {
			return parseErr("timens_offsets", no, field, line, err)
		}
		if len(f) != 3 {
			return o, bad("", errTooShort)
		}
		sec, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || sec >= maxOffsetSec || sec <= -maxOffsetSec { // so that ns fit in an int64
			return o, bad("seconds", errRange)
		}
		nsec, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || nsec < 0 || nsec >= int64(time.Second) {
			return o, bad("nanoseconds", errRange)
		}
		switch f[0] {
		case "monotonic":
			o.Monotonic = sec*int64(time.Second) + nsec
		case "boottime":
			o.Boottime = sec*int64(time.Second) + nsec
		default:
			return o, bad("clock", fmt.Errorf("unknown clock %q", f[0]))
		}
	}
	return o, nil
}

// ClockReading is CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME, in
// ns, as the reader's time namespace has them at one instant.
type ClockReading struct {
	Realtime, Monotonic, Boottime int64
}

// ReadClocks reads the three clocks close together: again if something
// (a preemption on a loaded host) came between the readings, so that
// they tell one instant within some tens of microseconds.
func ReadClocks() (ClockReading, error) {
	var best ClockReading
	spreadBest := int64(-1)
	for range 10 {
		var r0, m, b, r1 unix.Timespec
		for _, c := range []struct {
			id int32
			ts *unix.Timespec
		}{{unix.CLOCK_REALTIME, &r0}, {unix.CLOCK_MONOTONIC, &m}, {unix.CLOCK_BOOTTIME, &b}, {unix.CLOCK_REALTIME, &r1}} {
			if err := unix.ClockGettime(c.id, c.ts); err != nil {
				return best, fmt.Errorf("clock_gettime(%d): %w", c.id, err)
			}
		}
		spread := r1.Nano() - r0.Nano()
		if spreadBest < 0 || (spread >= 0 && spread < spreadBest) {
			spreadBest = spread
			best = ClockReading{Realtime: r0.Nano() + spread/2, Monotonic: m.Nano(), Boottime: b.Nano()}
		}
		if spread >= 0 && spread < int64(50*time.Microsecond) {
			break
		}
	}
	return best, nil
}
