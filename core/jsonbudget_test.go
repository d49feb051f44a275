package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"runtime"
	"testing"
)

// TestDecodeBoundedEmptyEntries: 16 MiB of empty array entries (which
// encoding/json alone decodes to over a GiB of VMA structs) are refused
// before decoding, at a cost of a few MiB.
func TestDecodeBoundedEmptyEntries(t *testing.T) {
	for _, field := range []string{"vmas", "threads", "fds"} {
		t.Run(field, func(t *testing.T) {
			var b bytes.Buffer
			b.WriteString(`{"process":{"` + field + `":[{}`)
			for b.Len() < 16<<20-8 {
				b.WriteString(`,{}`)
			}
			b.WriteString(`]}}`)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			var img Image
			err := DecodeBounded(b.Bytes(), &img, DefaultDecodeBudget)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrDecodeBudget) {
				t.Fatalf("got %v, want ErrDecodeBudget", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
				t.Errorf("refusing it allocated %d MiB", alloc>>20)
			}
		})
	}
}

// TestDecodeBoundedReal: a real image decodes as json.Unmarshal would.
func TestDecodeBoundedReal(t *testing.T) {
	img := validImage()
	img.Process.Cmdline = []string{"a", "b\"\\c"}
	data, err := json.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	var got, want Image
	if err := DecodeBounded(data, &got, DefaultDecodeBudget); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(data, &want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodeBounded differs from json.Unmarshal")
	}
	// A budget too small for it.
	if err := DecodeBounded(data, &got, -int64(len(data))); !errors.Is(err, ErrDecodeBudget) {
		t.Fatalf("no budget: %v", err)
	}
}

func FuzzDecodeBounded(f *testing.F) {
	data, _ := json.Marshal(validImage())
	f.Add(data)
	f.Add([]byte(`{"process":{"vmas":[{},{},{"file":null}]}}`))
	f.Add([]byte(`{"tree":[{"fds":[{"socket":{"tcp":{}}}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a, b Image
		err := DecodeBounded(data, &a, 1<<20)
		if errors.Is(err, ErrDecodeBudget) {
			return
		}
		berr := json.Unmarshal(data, &b)
		if (err == nil) != (berr == nil) {
			t.Fatalf("DecodeBounded: %v; json.Unmarshal: %v", err, berr)
		}
	})
}
