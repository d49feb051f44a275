package source

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWrittenFiles: the files a process holds open for writing or maps
// shared and writable are the ones asked about; one open read-only, one
// mapped privately, one under a synced tree and /proc's are not.
func TestWrittenFiles(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	for _, name := range []string{"written", "appended", "mapped", "readonly", "private", "synced/log"} {
		os.MkdirAll(filepath.Dir(path(name)), 0o755)
		if err := os.WriteFile(path(name), make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	open := func(name string, flag int) *os.File {
		f, err := os.OpenFile(path(name), flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	open("written", os.O_RDWR)
	open("appended", os.O_WRONLY|os.O_APPEND)
	open("readonly", os.O_RDONLY)
	open("synced/log", os.O_WRONLY)
	// Mapped, the fd closed: only the mapping holds the file.
	for name, flags := range map[string]int{"mapped": unix.MAP_SHARED, "private": unix.MAP_PRIVATE} {
		f, err := os.OpenFile(path(name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		m, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, flags)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(m) })
	}
	pf, err := os.OpenFile("/proc/self/oom_score_adj", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	files, err := writtenFiles([]int{os.Getpid()}, []string{path("synced")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		if filepath.Dir(f.path) == dir || f.path == path("synced/log") {
			got = append(got, filepath.Base(f.path))
		}
		if strings.HasPrefix(f.path, "/proc/") {
			t.Errorf("a file of /proc is asked about: %s", f.path)
		}
	}
	slices.Sort(got)
	if want := []string{"appended", "mapped", "written"}; !slices.Equal(got, want) {
		t.Errorf("written files %v, want %v", got, want)
	}
}
