package core

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// CPUList formats a CPU mask (CPU i in bit i%64 of word i/64) the way
// /sys and taskset do: "0-3,8".
func CPUList(mask []uint64) string {
	var b strings.Builder
	n := len(mask) * 64
	for i := 0; i < n; {
		if mask[i/64]&(1<<(i%64)) == 0 {
			i++
			continue
		}
		j := i
		for j+1 < n && mask[(j+1)/64]&(1<<((j+1)%64)) != 0 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j == i {
			fmt.Fprintf(&b, "%d", i)
		} else {
			fmt.Fprintf(&b, "%d-%d", i, j)
		}
		i = j + 1
	}
	return b.String()
}

// ParseCPUList parses a CPU list ("0-3,8", as /sys/devices/system/cpu/online
// has it) into a mask of at most MaxCPUs CPUs.
func ParseCPUList(s string) ([]uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty CPU list")
	}
	mask := make([]uint64, MaxCPUs/64)
	top := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 || a >= MaxCPUs {
			return nil, fmt.Errorf("CPU list %q: bad CPU %q", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b >= MaxCPUs {
				return nil, fmt.Errorf("CPU list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			mask[c/64] |= 1 << (c % 64)
		}
		top = max(top, b/64+1)
	}
	return mask[:top], nil
}
