package proc

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrMalformed matches (with errors.Is) every *ParseError.
var ErrMalformed = errors.New("malformed /proc file")

// ParseError reports text of a /proc file that does not have the expected
// form.
type ParseError struct {
	File  string // path, or the file's base name ("maps") when parsed from a reader
	Line  int    // 1-based; 0 when the file is not line oriented
	Field string // field name as the kernel or proc(5) names it
	Value string // the offending text, cut to at most 64 bytes
	Err   error  // what is wrong with it
}

func (e *ParseError) Error() string {
	s := "proc: " + e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	if e.Field != "" {
		s += ": field " + e.Field
	}
	if e.Value != "" {
		s += fmt.Sprintf(" %q", e.Value)
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the underlying reason.
func (e *ParseError) Unwrap() error { return e.Err }

// Is reports whether target is ErrMalformed.
func (e *ParseError) Is(target error) bool { return target == ErrMalformed }

// Reasons carried in ParseError.Err.
var (
	errSyntax   = errors.New("invalid syntax")
	errRange    = errors.New("value out of range")
	errMissing  = errors.New("missing")
	errTooShort = errors.New("too few fields")
)

const maxErrValue = 64

func parseErr(file string, line int, field string, value []byte, err error) *ParseError {
	if len(value) > maxErrValue {
		value = value[:maxErrValue]
	}
	return &ParseError{File: file, Line: line, Field: field, Value: string(value), Err: err}
}
