package source

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// Notification kinds of struct sigevent.
const (
	sigevSignal   = 0
	sigevNone     = 1
	sigevThread   = 2
	sigevThreadID = 4
)

// maxTimers caps what a /proc/PID/timers file may list.
const maxTimers = 1 << 16

// parseTimers parses /proc/PID/timers:
//
//	ID: 0
//	signal: 12/0000000000001234
//	notify: signal/pid.29971     (or thread/tid.N, none/pid.N)
//	ClockID: 1
func parseTimers(data []byte) ([]core.PosixTimer, error) {
	var out []core.PosixTimer
	var cur *core.PosixTimer
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("timers line %d: %q: no key", n, line)
		}
		val = strings.TrimSpace(val)
		if key == "ID" {
			if len(out) >= maxTimers {
				return nil, fmt.Errorf("timers line %d: more than %d timers", n, maxTimers)
			}
			id, err := strconv.ParseInt(val, 10, 32)
			if err != nil || id < 0 {
				return nil, fmt.Errorf("timers line %d: bad ID %q", n, val)
			}
			out = append(out, core.PosixTimer{ID: int(id)})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("timers line %d: %q before any ID", n, line)
		}
		switch key {
		case "signal":
			sig, value, ok := strings.Cut(val, "/")
			s, err1 := strconv.ParseUint(sig, 10, 8)
			v, err2 := strconv.ParseUint(value, 16, 64)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("timers line %d: bad signal %q", n, val)
			}
			cur.Signo, cur.Value = int(s), v
		case "notify":
			how, who, ok := strings.Cut(val, "/")
			if !ok {
				return nil, fmt.Errorf("timers line %d: bad notify %q", n, val)
			}
			switch how {
			case "signal":
				cur.Notify = sigevSignal
			case "none":
				cur.Notify = sigevNone
			case "thread":
				cur.Notify = sigevThreadID
				tid, err := strconv.ParseUint(strings.TrimPrefix(who, "tid."), 10, 31)
				if err != nil {
					return nil, fmt.Errorf("timers line %d: bad notify %q", n, val)
				}
				cur.TID = int(tid)
			default:
				return nil, fmt.Errorf("timers line %d: unknown notify %q", n, val)
			}
		case "ClockID":
			c, err := strconv.ParseInt(val, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("timers line %d: bad ClockID %q", n, val)
			}
			cur.Clock = int(c)
		}
	}
	return out, sc.Err()
}

// collectTimers reads the POSIX timers of the process and, by injected
// timer_gettime, when each fires next.
//
// Preconditions: the process is frozen and the scratch page is mapped.
func (d *dumper) collectTimers() error {
	data, err := proc.ReadFile(fmt.Sprintf("/proc/%d/timers", d.pid))
	if err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	timers, err := parseTimers(data)
	if err != nil {
		return fmt.Errorf("process %d: /proc/%d/timers: %w", d.pid, d.pid, err)
	}
	for i := range timers {
		t := &timers[i]
		_, b, err := d.call(d.p.Leader(), "timer_gettime", 32, unix.SYS_TIMER_GETTIME, uint64(t.ID), d.scratch)
		if err != nil {
			return fmt.Errorf("timer %d: %w", t.ID, err)
		}
		ts := func(o int) int64 { return int64(le64(b[o:]))*1e9 + int64(le64(b[o+8:])) }
		t.IntervalNS, t.ValueNS = ts(0), ts(16)
	}
	d.proc.PosixTimers = timers
	return nil
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
