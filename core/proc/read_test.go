package proc

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"slices"
	"testing"
)

// ReadFile reads what os.ReadFile reads (limits: past its first buffer of
// 512 bytes), and fails
// as it does.
func TestReadFileAsOS(t *testing.T) {
	for _, path := range []string{"/proc/self/limits", "/proc/self/auxv", "/proc/self/environ", "/proc/self/cmdline"} {
		got, err := ReadFile(path)
		if err != nil {
			t.Fatalf("ReadFile(%s): %v", path, err)
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("ReadFile(%s) = %d bytes %q, os.ReadFile %d bytes", path, len(got), got, len(want))
		}
	}
	// A file larger than the first buffer (512 bytes) many times over,
	// which changes little between the two reads.
	if got, err := readFile("/proc/self/mountinfo", 16); err != nil || len(got) < 512 {
		t.Errorf("readFile(mountinfo, 16) = %d bytes, %v: want it whole", len(got), err)
	}
	_, err := ReadFile("/proc/self/no-such-file")
	var pe *fs.PathError
	if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &pe) || pe.Path != "/proc/self/no-such-file" {
		t.Errorf("ReadFile of a missing file: %v, want a *PathError naming it, ErrNotExist", err)
	}
}

// readDirNames lists what os.ReadDir lists, but for "." and "..".
func TestReadDirNames(t *testing.T) {
	got, err := readDirNames("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range ents {
		want = append(want, e.Name())
	}
	// Each listing holds the fd it read the directory with: the two
	// differ by that one at most.
	slices.Sort(got)
	if len(got) == 0 || len(got) > len(want)+1 || len(want) > len(got)+1 {
		t.Errorf("readDirNames(/proc/self/fd) = %v, os.ReadDir %v", got, want)
	}
	if slices.Contains(got, ".") || slices.Contains(got, "..") {
		t.Errorf("readDirNames lists . or ..: %v", got)
	}
	// /proc has more entries than one getdents64 buffer holds (8 KiB):
	// every PID and file.
	pids, err := ReadPIDs()
	if err != nil || !slices.Contains(pids, os.Getpid()) || !slices.Contains(pids, 1) {
		t.Errorf("ReadPIDs() = %d PIDs, %v: want this process's and 1 among them", len(pids), err)
	}
	if _, err := readDirNames("/proc/self/no-such-dir"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("readDirNames of a missing directory: %v, want ErrNotExist", err)
	}
}
