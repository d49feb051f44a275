package core

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// Image metadata comes from outside (an image directory, or a live
// migration's source): decoding it must not let a small input make this
// side allocate without bound. encoding/json allocates a whole element per
// array entry, so a layout of 16 MiB of empty objects ("{},{},...")
// decodes to ~5.6 million VMA structs, over a GiB of heap. DecodeBounded
// walks the input against the Go type first, without allocating, adds up
// what decoding would allocate (every slice element, map entry, pointer
// target and string), and refuses the input before decoding if that
// exceeds a budget.

// ErrDecodeBudget: decoding the input would allocate more than allowed.
var ErrDecodeBudget = errors.New("input would decode to more memory than allowed")

// DefaultDecodeBudget is the decoded size allowed for a process's metadata
// on top of the input's own length. A real process's largest parts are
// its areas (vm.max_map_count, 65530 by default, at ~250 bytes each:
// 16 MiB) and its fds (~300 bytes each); 128 MiB leaves room for the
// largest real processes and keeps a hostile input's cost bounded.
const DefaultDecodeBudget = 128 << 20

// maxJSONDepth bounds the nesting of the input (the image model nests 6
// deep).
const maxJSONDepth = 32

// DecodeBounded decodes the JSON in data into v (a pointer), after
// CheckDecodeBudget. Malformed JSON is left for json.Unmarshal to report.
func DecodeBounded(data []byte, v any, budget int64) error {
	if err := CheckDecodeBudget(data, v, budget); err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// CheckDecodeBudget checks, without decoding, that decoding data into v (a
// pointer) allocates at most len(data)+budget bytes, as estimated from the
// sizes of the Go types; over budget, it returns an error wrapping
// ErrDecodeBudget. Malformed JSON passes: the decoder says what is wrong
// with it, better than this scan would.
func CheckDecodeBudget(data []byte, v any, budget int64) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("CheckDecodeBudget: need a non-nil pointer, got %T", v)
	}
	s := &jsonScan{data: data, left: int64(len(data)) + budget}
	if err := s.value(rv.Type().Elem(), 0); errors.Is(err, ErrDecodeBudget) {
		return err
	}
	return nil
}

type jsonScan struct {
	data []byte
	i    int
	left int64
}

var errJSONSyntax = errors.New("malformed JSON")

func (s *jsonScan) charge(n uintptr) error {
	s.left -= int64(n)
	if s.left < 0 {
		return fmt.Errorf("%w (at byte %d)", ErrDecodeBudget, s.i)
	}
	return nil
}

func (s *jsonScan) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// value scans one JSON value that decodes into a t (nil: not decoded, or
// decoded opaquely, which costs at most its length: json.RawMessage, an
// unknown field).
func (s *jsonScan) value(t reflect.Type, depth int) error {
	if depth > maxJSONDepth {
		return errJSONSyntax
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
		if s.peekNull() {
			t = nil
			break
		}
		if err := s.charge(t.Size()); err != nil {
			return err
		}
	}
	if t == rawMessageType {
		t = nil
	}
	s.ws()
	if s.i >= len(s.data) {
		return errJSONSyntax
	}
	switch c := s.data[s.i]; {
	case c == '{':
		return s.object(t, depth)
	case c == '[':
		return s.array(t, depth)
	case c == '"':
		start := s.i
		if err := s.str(); err != nil {
			return err
		}
		if t != nil {
			return s.charge(uintptr(s.i - start))
		}
		return nil
	default:
		for s.i < len(s.data) {
			switch s.data[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return nil
			}
			s.i++
		}
		return nil
	}
}

func (s *jsonScan) peekNull() bool {
	s.ws()
	return len(s.data)-s.i >= 4 && string(s.data[s.i:s.i+4]) == "null"
}

// str skips a string.
func (s *jsonScan) str() error {
	s.i++ // the opening quote
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case '\\':
			s.i += 2
			continue
		case '"':
			s.i++
			return nil
		}
		s.i++
	}
	return errJSONSyntax
}

func (s *jsonScan) array(t reflect.Type, depth int) error {
	s.i++ // [
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Slice:
			elem = t.Elem()
		case reflect.Array:
			elem = t.Elem()
			t = nil // in place: no allocation per element
		case reflect.Interface:
			elem = t // []any: each element an interface
		}
	}
	s.ws()
	if s.i < len(s.data) && s.data[s.i] == ']' {
		s.i++
		return nil
	}
	for {
		if t != nil && elem != nil {
			// A slice grows by doubling: up to twice the elements.
			if err := s.charge(2 * elem.Size()); err != nil {
				return err
			}
		}
		if err := s.value(elem, depth+1); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.data) {
			return errJSONSyntax
		}
		switch s.data[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return errJSONSyntax
		}
	}
}

func (s *jsonScan) object(t reflect.Type, depth int) error {
	s.i++ // {
	var fields map[string]reflect.Type
	var mapElem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
			mapElem = t.Elem()
		case reflect.Interface:
			mapElem = t
		}
	}
	s.ws()
	if s.i < len(s.data) && s.data[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.ws()
		if s.i >= len(s.data) || s.data[s.i] != '"' {
			return errJSONSyntax
		}
		start := s.i
		if err := s.str(); err != nil {
			return err
		}
		key := string(s.data[start+1 : s.i-1])
		s.ws()
		if s.i >= len(s.data) || s.data[s.i] != ':' {
			return errJSONSyntax
		}
		s.i++
		var vt reflect.Type
		switch {
		case fields != nil:
			vt = fields[key]
			if vt == nil {
				vt = fields[strings.ToLower(key)]
			}
		case mapElem != nil:
			// Key, value and the map's own overhead per entry.
			if err := s.charge(uintptr(len(key)) + 16 + mapElem.Size() + 16); err != nil {
				return err
			}
			vt = mapElem
		}
		if err := s.value(vt, depth+1); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.data) {
			return errJSONSyntax
		}
		switch s.data[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return errJSONSyntax
		}
	}
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of a struct's fields (and their lower
// case, as encoding/json matches names without regard to case) to their
// types. Embedded structs are not used by the image model.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			n, _, _ := strings.Cut(tag, ",")
			if n == "-" {
				continue
			}
			if n != "" {
				name = n
			}
		}
		m[name] = f.Type
		if _, ok := m[strings.ToLower(name)]; !ok {
			m[strings.ToLower(name)] = f.Type
		}
	}
	fieldCache.Store(t, m)
	return m
}
