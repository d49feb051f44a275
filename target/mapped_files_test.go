package target

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// checkMappedFiles looks at each mapped file once for all the processes
// of a layout (seen), refuses one that changed, and tells apart two
// references to one path that differ in what is compared.
func TestCheckMappedFilesOnce(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib.so")
	if err := os.WriteFile(lib, []byte("code"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(lib, &st); err != nil {
		t.Fatal(err)
	}
	ref := core.FileRef{Path: lib, Size: st.Size, Mtime: st.Mtim.Nano()}
	proc := func(refs ...core.FileRef) *core.Process {
		p := &core.Process{}
		for i := range refs {
			p.VMAs = append(p.VMAs, core.VMA{Start: uint64(i+1) << 20, End: uint64(i+1)<<20 + 4096, Kind: core.VMAFile, File: &refs[i]})
		}
		return p
	}
	seen := mappedFiles{}
	if err := checkMappedFiles(nil, proc(ref, ref), seen); err != nil {
		t.Fatalf("a file as it was: %v", err)
	}
	if len(seen) != 1 {
		t.Errorf("seen holds %d files after two areas of one, want 1", len(seen))
	}
	// Gone now: what seen holds is not looked at again, a fresh check
	// finds it gone.
	if err := os.Remove(lib); err != nil {
		t.Fatal(err)
	}
	if err := checkMappedFiles(nil, proc(ref), seen); err != nil {
		t.Errorf("a file seen already was looked at again: %v", err)
	}
	var ie *core.ImageError
	if err := checkMappedFiles(nil, proc(ref), mappedFiles{}); !errors.As(err, &ie) {
		t.Errorf("a mapped file gone: %v, want an *ImageError", err)
	}
	// The same path with another time is another file to check.
	if err := os.WriteFile(lib, []byte("code"), 0o644); err != nil {
		t.Fatal(err)
	}
	older := ref
	older.Mtime -= 1e9
	if err := unix.Utimes(lib, []unix.Timeval{unix.NsecToTimeval(ref.Mtime), unix.NsecToTimeval(ref.Mtime)}); err != nil {
		t.Fatal(err)
	}
	if err := checkMappedFiles(nil, proc(ref, older), seen); !errors.As(err, &ie) {
		t.Errorf("a reference to the path with another time: %v, want it checked and refused", err)
	}
}
