package testutil

import (
	"math/rand"
	"reflect"
)

// Fill sets every settable leaf reachable from v to random values, making
// nil pointers, slices and maps non-nil down to depth levels (a negative
// depth only changes what is there: the shape stays).
func Fill(v reflect.Value, r *rand.Rand, depth int) {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1 + r.Int63n(100))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		v.SetUint(v.Uint() + 1 + uint64(r.Int63n(100)))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(v.Float() + 1 + float64(r.Intn(100)))
	case reflect.String:
		v.SetString(v.String() + string(rune('a'+r.Intn(26))))
	case reflect.Pointer:
		if v.IsNil() {
			if depth <= 0 {
				return
			}
			v.Set(reflect.New(v.Type().Elem()))
		}
		Fill(v.Elem(), r, depth-1)
	case reflect.Slice:
		if v.IsNil() && depth > 0 {
			n := 1 + r.Intn(3)
			v.Set(reflect.MakeSlice(v.Type(), n, n))
		}
		for i := 0; i < v.Len(); i++ {
			Fill(v.Index(i), r, depth-1)
		}
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			Fill(v.Index(i), r, depth-1)
		}
	case reflect.Map:
		if v.IsNil() && depth > 0 {
			v.Set(reflect.MakeMap(v.Type()))
			for i := 0; i < 2; i++ {
				k := reflect.New(v.Type().Key()).Elem()
				Fill(k, r, depth-1)
				e := reflect.New(v.Type().Elem()).Elem()
				Fill(e, r, depth-1)
				v.SetMapIndex(k, e)
			}
			return
		}
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			// A map's values are not addressable: a changed value is
			// a fresh one, so the original's memory is reached through
			// the copy only if the value itself holds references.
			Fill(e, r, depth-1)
			v.SetMapIndex(k, e)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				Fill(v.Field(i), r, depth)
			}
		}
	}
}
