// Package deepcopy copies values of plain data types (structs, slices,
// arrays, maps and pointers of them, with numbers, strings and booleans
// at the leaves) so that the copy shares no memory with the original.
//
// It is what a round trip through encoding/json gives for such types,
// without the text in between (a tenth of the time for a process's
// description, copied in the frozen window: see source's layoutCopy), and
// it keeps what JSON would not: an empty slice stays empty, not nil.
package deepcopy

import (
	"fmt"
	"reflect"
	"sync"
)

// Of returns a copy of v that shares no memory with it. A type it cannot
// copy so (see Check) is an error, and nothing is copied. v must hold no
// cycle of pointers (which JSON could not encode either): the copy would
// not end.
func Of[T any](v T) (T, error) {
	var out T
	rv := reflect.ValueOf(&v).Elem()
	if err := Check(rv.Type()); err != nil {
		return out, err
	}
	copyValue(reflect.ValueOf(&out).Elem(), rv)
	return out, nil
}

// kinds caches, for each type Check accepted, whether a value of it holds
// references (pointers, slices, maps): a type without any is copied by
// assignment.
var kinds sync.Map // reflect.Type -> bool (holds references)

// Check says whether values of t can be copied without sharing: it holds
// no channel, function, interface or unsafe pointer, and no unexported
// field that holds a reference (one that the copy could not reach).
func Check(t reflect.Type) error {
	_, err := refs(t, map[reflect.Type]bool{})
	return err
}

// refs reports whether t holds references, or why it cannot be copied.
// visiting breaks the cycles of recursive types (a type being looked at
// is taken to hold references).
func refs(t reflect.Type, visiting map[reflect.Type]bool) (bool, error) {
	if r, ok := kinds.Load(t); ok {
		return r.(bool), nil
	}
	if visiting[t] {
		return true, nil
	}
	visiting[t] = true
	defer delete(visiting, t)
	var r bool
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		r = false
	case reflect.Pointer, reflect.Slice:
		if _, err := refs(t.Elem(), visiting); err != nil {
			return false, err
		}
		r = true
	case reflect.Map:
		if _, err := refs(t.Key(), visiting); err != nil {
			return false, err
		}
		if _, err := refs(t.Elem(), visiting); err != nil {
			return false, err
		}
		r = true
	case reflect.Array:
		er, err := refs(t.Elem(), visiting)
		if err != nil {
			return false, err
		}
		r = er && t.Len() > 0
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			fr, err := refs(f.Type, visiting)
			if err != nil {
				return false, fmt.Errorf("%s.%s: %w", t, f.Name, err)
			}
			if fr && !f.IsExported() {
				return false, fmt.Errorf("%s.%s: an unexported field holding references cannot be copied", t, f.Name)
			}
			r = r || fr
		}
	default:
		return false, fmt.Errorf("a %s (%s) cannot be copied without sharing", t.Kind(), t)
	}
	kinds.Store(t, r)
	return r, nil
}

// holdsRefs is refs for a type Check accepted.
func holdsRefs(t reflect.Type) bool {
	r, ok := kinds.Load(t)
	return !ok || r.(bool)
}

// copyValue sets dst, a zero value of src's type, to a copy of src.
func copyValue(dst, src reflect.Value) {
	t := src.Type()
	if !holdsRefs(t) {
		dst.Set(src)
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		p := reflect.New(t.Elem())
		copyValue(p.Elem(), src.Elem())
		dst.Set(p)
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		n := src.Len()
		s := reflect.MakeSlice(t, n, n)
		if holdsRefs(t.Elem()) {
			for i := 0; i < n; i++ {
				copyValue(s.Index(i), src.Index(i))
			}
		} else {
			reflect.Copy(s, src)
		}
		dst.Set(s)
	case reflect.Array:
		for i := 0; i < src.Len(); i++ {
			copyValue(dst.Index(i), src.Index(i))
		}
	case reflect.Map:
		if src.IsNil() {
			return
		}
		m := reflect.MakeMapWithSize(t, src.Len())
		it := src.MapRange()
		for it.Next() {
			k := reflect.New(t.Key()).Elem()
			copyValue(k, it.Key())
			v := reflect.New(t.Elem()).Elem()
			copyValue(v, it.Value())
			m.SetMapIndex(k, v)
		}
		dst.Set(m)
	case reflect.Struct:
		// The fields without references (exported or not: Check let no
		// unexported one hold any) come with the assignment; those with,
		// each copied in turn over the shared value.
		dst.Set(src)
		for i := 0; i < t.NumField(); i++ {
			if holdsRefs(t.Field(i).Type) {
				f := dst.Field(i)
				f.SetZero()
				copyValue(f, src.Field(i))
			}
		}
	default:
		dst.Set(src)
	}
}
