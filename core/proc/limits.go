package proc

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// Limit is a resource limit, soft and hard; math.MaxUint64 is unlimited.
type Limit struct {
	Cur, Max uint64
}

// ReadLimits reads /proc/PID/limits: the limits by resource number
// (RLIMIT_CPU first), in the order the kernel prints them.
func ReadLimits(pid int) ([]Limit, error) {
	b, err := readFile(pidPath(pid, "limits"), 2048)
	if err != nil {
		return nil, err
	}
	return ParseLimits(b)
}

// ParseLimits parses the contents of /proc/PID/limits. Each line after the
// header is a name of several words, the soft and hard limits (a number
// or "unlimited") and, for most, a unit: the limits are the first two
// fields from the 27th column, where the kernel starts them.
func ParseLimits(b []byte) ([]Limit, error) {
	var out []Limit
	for no := 1; len(b) > 0; no++ {
		var line []byte
		line, b = cutLine(b)
		if no == 1 || len(line) == 0 {
			continue
		}
		if len(line) < 26 {
			return nil, limitsErr(no, line, errors.New("too short"))
		}
		f := strings.Fields(string(line[26:]))
		if len(f) < 2 {
			return nil, limitsErr(no, line, errors.New("no soft and hard limit"))
		}
		var l Limit
		for i, p := range []*uint64{&l.Cur, &l.Max} {
			if f[i] == "unlimited" {
				*p = math.MaxUint64
				continue
			}
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, limitsErr(no, line, err)
			}
			*p = v
		}
		out = append(out, l)
	}
	return out, nil
}

func limitsErr(no int, line []byte, err error) error {
	if len(line) > 64 {
		line = line[:64]
	}
	return &ParseError{File: "limits", Line: no, Value: string(line), Err: err}
}
