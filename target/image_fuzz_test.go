package target

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"github.com/procmig/migrate/core"
)

// seedImage is a real image (`migrate dump` of /usr/bin/sleep started in
// /, no blobs) in testdata.
const seedImage = "testdata/image-sleep"

// fuzzImageDir copies the seed image to a directory of the test's and
// adds a pipe blob (files/pipe-1, "abc") that the second seed names.
func fuzzImageDir(tb testing.TB, dir string) (meta, withBlob []byte) {
	tb.Helper()
	for _, name := range []string{core.MetaFile, core.PagesFile} {
		b, err := os.ReadFile(filepath.Join(seedImage, name))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			tb.Fatal(err)
		}
		if name == core.MetaFile {
			meta = b
		}
	}
	if err := os.Mkdir(filepath.Join(dir, core.FilesDir), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, core.FilesDir, "pipe-1"), []byte("abc"), 0o600); err != nil {
		tb.Fatal(err)
	}
	img, err := core.DecodeImage(bytes.NewReader(meta))
	if err != nil {
		tb.Fatalf("seed image: %v", err)
	}
	img.Process.FDs = append(img.Process.FDs,
		core.FD{FD: 3, Kind: core.FDPipe, Pipe: 42, Data: core.FilesDir + "/pipe-1"},
		core.FD{FD: 4, Kind: core.FDPipe, Pipe: 42, Flags: 1})
	img.Blobs = map[string]core.Blob{core.FilesDir + "/pipe-1": {Size: 3, SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}
	if withBlob, err = json.Marshal(img); err != nil {
		tb.Fatal(err)
	}
	return meta, withBlob
}

// TestValidateSeedImage: the seed image passes the restore's checks on a
// host where /usr/bin/sleep and the vdso are the dumping host's (else the
// fuzz below explores less, and this says why).
func TestValidateSeedImage(t *testing.T) {
	dir := t.TempDir()
	meta, withBlob := fuzzImageDir(t, dir)
	for _, b := range [][]byte{meta, withBlob} {
		img, err := core.DecodeImage(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(context.Background(), dir, img); err != nil {
			var ie *core.ImageError
			var ve *VDSOMismatchError
			if errors.As(err, &ie) && ie.File == img.Process.Exe.Path || errors.As(err, &ve) {
				t.Skipf("the seed image was dumped on another host: %v", err)
			}
			t.Fatalf("the seed image fails the restore's checks: %v", err)
		}
	}
}

// FuzzValidateImage: what a restore does with an image before it creates
// anything (decode, then validate against the image directory and this
// host) never panics and never hangs, whatever image.json holds.
func FuzzValidateImage(f *testing.F) {
	dir := f.TempDir()
	meta, withBlob := fuzzImageDir(f, dir)
	f.Add(meta)
	f.Add(withBlob)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := core.DecodeImage(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := validate(ctx, dir, img); err == nil {
			// Accepted: every blob it names is one of the directory's.
			for _, pp := range img.Processes() {
				for _, b := range pp.Process.BlobNames() {
					if b != core.FilesDir+"/pipe-1" {
						t.Fatalf("accepted an image naming blob %q", b)
					}
				}
			}
		}
	})
}

// leaf is a place in a decoded JSON document: set replaces its value,
// drop removes it (a key of an object, an element of an array).
type leaf struct {
	set  func(v any)
	drop func()
}

// leaves lists every value of doc (objects' keys in sorted order), the
// containers included.
func leaves(doc any) []leaf {
	var out []leaf
	var walk func(v any, set func(any), drop func())
	walk = func(v any, set func(any), drop func()) {
		out = append(out, leaf{set, drop})
		switch v := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(v[k], func(x any) { v[k] = x }, func() { delete(v, k) })
			}
		case []any:
			for i := range v {
				walk(v[i], func(x any) { v[i] = x }, func() { v[i] = nil })
			}
		}
	}
	walk(doc, func(any) {}, func() {})
	return out
}

// FuzzValidateImageFields: the restore's checks of a real image with one
// value changed (to a number, a string, null, or removed), which reaches
// far more of the checks than mutating bytes of a 28 KB file does.
func FuzzValidateImageFields(f *testing.F) {
	dir := f.TempDir()
	_, withBlob := fuzzImageDir(f, dir)
	f.Add(uint16(0), uint8(0), int64(0), "")
	f.Add(uint16(40), uint8(0), int64(1<<30), "")
	f.Add(uint16(12), uint8(1), int64(0), "/etc/shadow")
	f.Add(uint16(7), uint8(2), int64(-1), "")
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, at uint16, op uint8, n int64, s string) {
		dec := json.NewDecoder(bytes.NewReader(withBlob))
		dec.UseNumber()
		var doc any
		if err := dec.Decode(&doc); err != nil {
			t.Fatal(err)
		}
		ls := leaves(doc)
		l := ls[int(at)%len(ls)]
		switch op % 5 {
		case 0:
			l.set(json.Number(strconv.FormatInt(n, 10)))
		case 1:
			l.set(s)
		case 2:
			l.set(nil)
		case 3:
			l.drop()
		case 4:
			l.set(json.Number(strconv.FormatUint(uint64(n)|1<<63, 10)))
		}
		data, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		img, err := core.DecodeImage(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := validate(ctx, dir, img); err == nil {
			for _, pp := range img.Processes() {
				for _, b := range pp.Process.BlobNames() {
					if b != core.FilesDir+"/pipe-1" {
						t.Fatalf("accepted an image naming blob %q", b)
					}
				}
			}
		}
	})
}
