package proc

import (
	"bytes"
	"math"
)

// Number parsers on byte slices. They accept exactly the digits of their
// base, no sign unless stated, no spaces, and report overflow; they never
// allocate. The error is errSyntax or errRange.

func parseUint(b []byte, base uint64) (uint64, error) {
	if len(b) == 0 {
		return 0, errSyntax
	}
	cutoff := math.MaxUint64/base + 1 // n*base overflows if n >= cutoff
	var n uint64
	for _, c := range b {
		var d uint64
		switch {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case 'a' <= c && c <= 'f':
			d = uint64(c-'a') + 10
		case 'A' <= c && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, errSyntax
		}
		if d >= base {
			return 0, errSyntax
		}
		if n >= cutoff {
			return 0, errRange
		}
		n1 := n*base + d
		if n1 < d {
			return 0, errRange
		}
		n = n1
	}
	return n, nil
}

func parseDec(b []byte) (uint64, error) { return parseUint(b, 10) }
func parseHex(b []byte) (uint64, error) { return parseUint(b, 16) }
func parseOct(b []byte) (uint64, error) { return parseUint(b, 8) }

// parseInt parses an optionally negative decimal that fits in bits bits.
func parseInt(b []byte, bits uint) (int64, error) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, err := parseDec(b)
	if err != nil {
		return 0, err
	}
	lim := uint64(1) << (bits - 1)
	if neg {
		if u > lim {
			return 0, errRange
		}
		return -int64(u-1) - 1, nil
	}
	if u >= lim {
		return 0, errRange
	}
	return int64(u), nil
}

// parseUintBits parses an unsigned number in base that fits in bits bits.
func parseUintBits(b []byte, base uint64, bits uint) (uint64, error) {
	u, err := parseUint(b, base)
	if err != nil {
		return 0, err
	}
	if bits < 64 && u >= 1<<bits {
		return 0, errRange
	}
	return u, nil
}

// Int sizes used by the fields of this package: int is 64 bits on the only
// supported architecture, but values that the kernel prints with %d are
// checked against 32 bits so garbage is caught early.
const (
	bitsInt   = 32
	bitsInt64 = 64
)

// cutLine returns the first line of b (without its '\n') and the rest.
// A last line without '\n' is returned as a line too.
func cutLine(b []byte) (line, rest []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// nextField skips spaces and tabs and returns the field up to the next space
// or tab, and what follows it.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	j := i
	for j < len(b) && b[j] != ' ' && b[j] != '\t' {
		j++
	}
	return b[i:j], b[j:]
}

// trimSpace trims spaces and tabs at both ends.
func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// cutKey splits "key:value" at the first ':' and trims the value's leading
// spaces and tabs.
func cutKey(line []byte) (key, value []byte, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i < 0 {
		return nil, nil, false
	}
	v := line[i+1:]
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	return line[:i], v, true
}
