package filesync

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzReader: any stream decodes to records that keep the limits, or to
// ErrStream; never a path out of the roots.
func FuzzReader(f *testing.F) {
	roots := []string{"/srv/data", "/var/log/app.log"}
	f.Add(stream(f, func(w *writer) {
		w.header(&Header{Path: "/srv/data/a", Mode: unix.S_IFREG | 0o644, Size: 3})
		w.block(0, []byte("abc"))
		w.round(0, false)
		w.header(&Header{Path: "/var/log/app.log", Mode: unix.S_IFREG | 0o644, Size: 1})
		w.round(1, true)
	}))
	f.Add(stream(f, func(w *writer) { w.header(&Header{Path: "/srv/data/../x", Mode: unix.S_IFREG}) }))
	f.Add([]byte(Magic + "\x02\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), roots)
		var file *Header
		for {
			rec, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrStream) {
					t.Fatalf("error %v is not ErrStream", err)
				}
				return
			}
			switch {
			case rec.Header != nil:
				if Under(rec.Header.Path, roots) == "" {
					t.Fatalf("path %q out of the roots", rec.Header.Path)
				}
				file = rec.Header
			case rec.Data != nil:
				if file == nil || rec.Off+int64(len(rec.Data)) > file.Size {
					t.Fatalf("block at %d of %d bytes, file %+v", rec.Off, len(rec.Data), file)
				}
			}
		}
	})
}

// FuzzDecodeQuery: a query decodes to probes with clean absolute paths,
// or to ErrBadQuery.
func FuzzDecodeQuery(f *testing.F) {
	f.Add([]byte(`{"files":[{"path":"/a/b","ino":1,"size":3,"mtime_ns":5,"sample_len":3,"sample":"` + string(bytes.Repeat([]byte("a"), 64)) + `"}]}`))
	f.Add([]byte(`{"files":[{"path":"/a/../b"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := DecodeQuery(b)
		if err != nil {
			if !errors.Is(err, ErrBadQuery) {
				t.Fatalf("error %v is not ErrBadQuery", err)
			}
			return
		}
		for _, p := range q.Files {
			if p.Path == "" || p.Path[0] != '/' || bytes.Contains([]byte(p.Path), []byte("/../")) {
				t.Fatalf("path %q", p.Path)
			}
		}
	})
}

// FuzzApply: whatever stream a peer sends, the applier writes nothing
// outside the synced root, even with a symlink in the root that leads
// out, and leaves nothing once discarded. "/R" in the input stands for
// the root.
func FuzzApply(f *testing.F) {
	f.Add(stream(f, func(w *writer) {
		w.header(&Header{Path: "/R/d", Mode: unix.S_IFDIR | 0o755})
		w.header(&Header{Path: "/R/d/f", Mode: unix.S_IFREG | 0o644, Size: 3})
		w.block(0, []byte("abc"))
		w.round(0, false)
		w.header(&Header{Path: "/R/out/f", Mode: unix.S_IFREG | 0o644, Size: 1})
		w.block(0, []byte("x"))
		w.round(1, true)
	}))
	f.Add(stream(f, func(w *writer) {
		w.header(&Header{Path: "/R/out/../../x", Mode: unix.S_IFREG | 0o644, Size: 1})
		w.round(0, true)
	}))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		root, outside := filepath.Join(dir, "root"), filepath.Join(dir, "outside")
		os.Mkdir(root, 0o755)
		os.Mkdir(outside, 0o755)
		if err := os.Symlink(outside, filepath.Join(root, "out")); err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/R"), []byte(root))
		a, err := NewApplier([]string{root}, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		err = a.Apply(NewReader(bytes.NewReader(b), []string{root}), nil)
		if err != nil && !errors.Is(err, ErrStream) && !errors.Is(err, ErrRefused) {
			var pe *os.PathError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is neither ErrStream, ErrRefused nor a path's", err, err)
			}
		}
		a.Discard()
		a.Close()
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Fatalf("wrote outside the root: %v", ents)
		}
		if ents, _ := os.ReadDir(root); len(ents) != 1 {
			t.Fatalf("left in the root after Discard: %v", ents)
		}
	})
}
