package filesync

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// stream encodes records as a Sender would.
func stream(t testing.TB, f func(w *writer)) []byte {
	t.Helper()
	var b bytes.Buffer
	w := &writer{w: bufio.NewWriter(&b)}
	f(w)
	if err := w.w.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func apply(t *testing.T, roots []string, data []byte) (*Applier, error) {
	t.Helper()
	a, err := NewApplier(roots, "test")
	if err != nil {
		t.Fatalf("NewApplier: %v", err)
	}
	t.Cleanup(func() { a.Discard(); a.Close() })
	return a, a.Apply(NewReader(bytes.NewReader(data), roots), nil)
}

// TestSyncRoundTrip: a tree sent in rounds (whole, then changed blocks,
// then the last changes) comes out the same, with the source's modes and
// times, and only once committed.
func TestSyncRoundTrip(t *testing.T) {
	root := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*BlockSize/16+100)
	write := func(name string, b []byte, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(root, name), b, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, name), mode)
	}
	write("big", big, 0o640)
	write("sub/log", []byte("line 1\n"), 0o600)
	if err := os.Symlink("big", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	var wire bytes.Buffer
	s := NewSender([]string{root}, &wire)
	if err := s.Round(0, false); err != nil {
		t.Fatal(err)
	}
	first := wire.Len()
	// One block changes, the log grows.
	big[BlockSize+5] = 'X'
	write("big", big, 0o640)
	f, err := os.OpenFile(filepath.Join(root, "sub/log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("line 2\n")
	f.Close()
	if err := s.Round(1, false); err != nil {
		t.Fatal(err)
	}
	if second := wire.Len() - first; second > 2*BlockSize {
		t.Errorf("the second round sent %d bytes for one changed block and a line", second)
	}
	write("sub/new", []byte("new"), 0o644)
	if err := s.Round(2, true); err != nil {
		t.Fatal(err)
	}
	if len(s.Skipped) != 1 || s.Skipped[0] != filepath.Join(root, "link") {
		t.Errorf("skipped %v, want the symlink", s.Skipped)
	}

	// The target: the same path, another tree.
	src := root + ".src"
	if err := os.Rename(root, src); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := apply(t, []string{root}, wire.Bytes())
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "big")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("big is in place before the commit (%v)", err)
	}
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"big", "sub/log", "sub/new", "sub"} {
		var want, got unix.Stat_t
		if err := unix.Lstat(filepath.Join(src, name), &want); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lstat(filepath.Join(root, name), &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Mode != want.Mode || got.Uid != want.Uid || got.Size != want.Size || (got.Mtim != want.Mtim && name != "sub") {
			t.Errorf("%s: mode %o uid %d size %d mtime %v, want %o %d %d %v", name, got.Mode, got.Uid, got.Size, got.Mtim, want.Mode, want.Uid, want.Size, want.Mtim)
		}
		if name == "sub" {
			continue
		}
		b1, _ := os.ReadFile(filepath.Join(src, name))
		b2, _ := os.ReadFile(filepath.Join(root, name))
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s differs", name)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "link")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the symlink was made (%v)", err)
	}
}

// TestSyncDiscard: a stream applied but not committed leaves nothing.
func TestSyncDiscard(t *testing.T) {
	root := t.TempDir()
	data := stream(t, func(w *writer) {
		w.header(&Header{Path: root + "/d", Mode: unix.S_IFDIR | 0o755})
		w.header(&Header{Path: root + "/d/f", Mode: unix.S_IFREG | 0o644, Size: 3})
		w.block(0, []byte("abc"))
		w.round(0, true)
	})
	a, err := apply(t, []string{root}, data)
	if err != nil {
		t.Fatal(err)
	}
	a.Discard()
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
}

// TestSyncRefuses: paths out of the roots, through a symlink, over
// another user's file or a non-file, and records out of place are
// refused, and nothing is written outside the root.
func TestSyncRefuses(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "theirs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(root, "theirs"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(path string) func(w *writer) {
		return func(w *writer) {
			w.header(&Header{Path: path, Mode: unix.S_IFREG | 0o644, Size: 1})
			w.block(0, []byte("x"))
			w.round(0, true)
		}
	}
	for name, f := range map[string]func(w *writer){
		"outside":     file(outside + "/f"),
		"dotdot":      file(root + "/../outside/f"),
		"symlink":     file(root + "/escape/f"),
		"symlink dir": func(w *writer) { w.header(&Header{Path: root + "/escape/d", Mode: unix.S_IFDIR | 0o755}) },
		"theirs":      file(root + "/theirs"),
		"a directory": file(root + "/adir"),
		"device":      func(w *writer) { w.header(&Header{Path: root + "/dev", Mode: unix.S_IFCHR | 0o666}) },
		"setuid dir root": func(w *writer) {
			w.header(&Header{Path: root, Mode: unix.S_IFREG | 0o4755})
		},
		"block first": func(w *writer) { w.block(0, []byte("x")) },
		"past size": func(w *writer) {
			w.header(&Header{Path: root + "/f", Mode: unix.S_IFREG | 0o644, Size: 1})
			w.block(1, []byte("x"))
		},
		"no end": func(w *writer) { w.header(&Header{Path: root + "/f", Mode: unix.S_IFREG | 0o644}) },
	} {
		t.Run(name, func(t *testing.T) {
			_, err := apply(t, []string{root}, stream(t, f))
			if err == nil {
				t.Fatal("applied")
			}
			if !errors.Is(err, ErrStream) && !errors.Is(err, ErrRefused) {
				t.Errorf("error %v is neither ErrStream nor ErrRefused", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("wrote outside the root: %v", ents)
			}
		})
	}
}

// TestProbe: the target sees the same file at its path, another file
// there, or none; a symlink on the way is not followed.
func TestProbe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	if err := os.WriteFile(path, []byte("some log\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	probe := func(path string) Probe {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		p, err := NewProbe(path, f)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := probe(path)
	q, err := DecodeQuery(mustJSON(t, Query{Files: []Probe{p}}))
	if err != nil {
		t.Fatal(err)
	}
	if s := Answer(q).Files[0]; !Shared(p, p, s) {
		t.Errorf("the same file is not shared: %+v", s)
	}
	// Another file, same contents, at the path.
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("some log\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s := Answer(q).Files[0]; Shared(p, p, s) {
		t.Errorf("a copy is shared: %+v", s)
	}
	os.Remove(path)
	if s := Answer(q).Files[0]; Shared(p, p, s) || s.Exists {
		t.Errorf("no file is shared: %+v", s)
	}
	// A directory: its own inode, or another.
	dp := probe(dir)
	if !dp.Dir || dp.SampleLen != 0 {
		t.Fatalf("directory probe %+v", dp)
	}
	if s := Answer(&Query{Files: []Probe{dp}}).Files[0]; !Shared(dp, dp, s) {
		t.Errorf("the same directory is not shared: %+v", s)
	}
	other := dp
	other.Ino++
	if s := Answer(&Query{Files: []Probe{other}}).Files[0]; Shared(other, other, s) {
		t.Errorf("another directory is shared: %+v", s)
	}
	// Through a symlink.
	if err := os.Symlink(dir, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	p2 := probe(path + ".old")
	p2.Path = filepath.Join(dir, "link", "log.old")
	if s := Answer(&Query{Files: []Probe{p2}}).Files[0]; Shared(p2, p2, s) || s.Err == "" {
		t.Errorf("followed a symlink: %+v", s)
	}
}

func TestDecodeQueryRefuses(t *testing.T) {
	good := Probe{Path: "/a", Sample: string(bytes.Repeat([]byte("0"), 64))}
	for name, q := range map[string]Query{
		"relative": {Files: []Probe{{Path: "a", Sample: good.Sample}}},
		"dotdot":   {Files: []Probe{{Path: "/a/../b", Sample: good.Sample}}},
		"sample":   {Files: []Probe{{Path: "/a", Sample: "zz"}}},
		"length":   {Files: []Probe{{Path: "/a", Size: 10, SampleLen: 11, Sample: good.Sample}}},
	} {
		if _, err := DecodeQuery(mustJSON(t, q)); !errors.Is(err, ErrBadQuery) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := DecodeQuery(mustJSON(t, Query{Files: []Probe{good}})); err != nil {
		t.Error(err)
	}
}
