package target

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestMain makes the test process a child subreaper (a restored process
// becomes its child) and checks that no test leaves a child behind.
func TestMain(m *testing.M) { testutil.Main(m) }

// handMade returns a small, self-consistent image of a process that does
// not exist, for tests that need the restore to refuse it before it gets
// anywhere near creating a process.
func handMade(t *testing.T) *core.Image {
	t.Helper()
	pid := testutil.FreePID(t)
	return &core.Image{
		Kind:    core.ImageKind,
		Version: core.ImageVersion,
		Created: time.Now().UTC(),
		Arch:    "amd64",
		Pages:   core.PagesInfo{File: core.PagesFile},
		Process: core.Process{
			PID:     pid,
			Comm:    "handmade",
			Exe:     core.FileRef{Path: "/bin/true"},
			Cwd:     "/",
			Root:    "/",
			MM:      core.MM{StartCode: 0x400000, EndCode: 0x401000},
			Attrs:   &core.ProcAttrs{},
			Threads: []core.Thread{{TID: pid, Sched: &core.Sched{Affinity: []uint64{1}, TimerSlackNS: 50000}}},
			VMAs: []core.VMA{
				{Start: 0x400000, End: 0x401000, Prot: 5, Flags: 2, Kind: core.VMAAnon},
			},
		},
	}
}

// write stores img in a new image directory, with an empty page file.
func write(t *testing.T, img *core.Image) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, core.PagesFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, core.FilesDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := core.WriteImage(dir, img); err != nil {
		t.Fatal(err)
	}
	return dir
}

// refuse restores dir, which must fail without creating any process.
func refuse(t *testing.T, dir string, pid int) error {
	t.Helper()
	kids := testutil.Children()
	rep, err := Restore(context.Background(), RestoreOptions{Dir: dir})
	if err == nil {
		t.Fatalf("restore succeeded: %+v", rep)
	}
	t.Logf("refused as expected: %v", err)
	if pid > 0 {
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr == nil {
			t.Errorf("a process with pid %d exists after the refused restore", pid)
		}
	}
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children after the refused restore: %v, before %v", got, kids)
	}
	return err
}

func requireImageError(t *testing.T, err error, file string) *core.ImageError {
	t.Helper()
	var ie *core.ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("error %v (%T) is not a *core.ImageError", err, err)
	}
	if ie.File != file {
		t.Errorf("ImageError names %q, want %q", ie.File, file)
	}
	return ie
}

// TestRestoreNoImage: a directory without an image, or no directory.
func TestRestoreNoImage(t *testing.T) {
	testutil.RequireRoot(t)
	for name, dir := range map[string]string{
		"empty directory":   t.TempDir(),
		"missing directory": filepath.Join(t.TempDir(), "nope"),
	} {
		t.Run(name, func(t *testing.T) {
			err := refuse(t, dir, 0)
			requireImageError(t, err, filepath.Join(dir, core.MetaFile))
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v is not fs.ErrNotExist", err)
			}
		})
	}
}

// TestRestoreHostileMetadata: metadata that would make a restore act
// outside its image or on nonsense is refused as invalid before anything
// is created.
func TestRestoreHostileMetadata(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		edit func(img *core.Image)
	}{
		{"blob outside the image directory", func(img *core.Image) {
			img.Process.FDs = []core.FD{{FD: 3, Kind: core.FDFile, File: &core.FileRef{Path: "/etc/passwd", Deleted: true, Blob: "files/../../../etc/shadow"}}}
		}},
		{"blob with an absolute path", func(img *core.Image) {
			img.Process.FDs = []core.FD{{FD: 3, Kind: core.FDPipe, Data: "/etc/shadow"}}
		}},
		{"page file outside the image directory", func(img *core.Image) { img.Pages.File = "../pages.img" }},
		{"pid 0", func(img *core.Image) { img.Process.PID = 0; img.Process.Threads[0].TID = 0 }},
		{"leader is not the first thread", func(img *core.Image) { img.Process.Threads[0].TID++ }},
		{"no threads", func(img *core.Image) { img.Process.Threads = nil }},
		{"overlapping areas", func(img *core.Image) {
			img.Process.VMAs = append(img.Process.VMAs, core.VMA{Start: 0x400000, End: 0x402000, Prot: 3, Flags: 2, Kind: core.VMAAnon})
		}},
		{"area beyond user space", func(img *core.Image) {
			img.Process.VMAs[0].Start, img.Process.VMAs[0].End = 1<<47, 1<<47+4096
		}},
		{"unaligned area", func(img *core.Image) { img.Process.VMAs[0].End = 0x400123 }},
		{"more pages than the area holds", func(img *core.Image) { img.Process.VMAs[0].Pages = 2 }},
		{"unknown area kind", func(img *core.Image) { img.Process.VMAs[0].Kind = "device" }},
		{"file area without a file", func(img *core.Image) { img.Process.VMAs[0].Kind = core.VMAFile }},
		{"fd listed twice", func(img *core.Image) {
			img.Process.FDs = []core.FD{{FD: 3, Kind: core.FDEventfd}, {FD: 3, Kind: core.FDEventfd}}
		}},
		{"negative fd", func(img *core.Image) { img.Process.FDs = []core.FD{{FD: -1, Kind: core.FDEventfd}} }},
		{"not 64 sigactions", func(img *core.Image) { img.Process.Sigactions = make([]core.Sigaction, 65) }},
		{"restart code without a call to restart", func(img *core.Image) { img.Process.Threads[0].RestartCode = 514 }},
		{"restart code of no restart", func(img *core.Image) {
			img.Process.Threads[0].Restart, img.Process.Threads[0].RestartCode = "restart", 4
		}},
		{"relative working directory", func(img *core.Image) { img.Process.Cwd = "../.." }},
		{"relative file of an fd", func(img *core.Image) {
			img.Process.FDs = []core.FD{{FD: 3, Kind: core.FDFile, File: &core.FileRef{Path: "../../etc/shadow"}}}
		}},
		{"unclean mapped file", func(img *core.Image) {
			img.Process.VMAs[0].Kind, img.Process.VMAs[0].File = core.VMAFile, &core.FileRef{Path: "/tmp/../etc/shadow"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := handMade(t)
			tc.edit(img)
			dir := write(t, img)
			requireImageError(t, refuse(t, dir, img.Process.PID), filepath.Join(dir, core.MetaFile))
		})
	}
}

// TestRestoreMissingBlob: an fd whose stored contents are missing from
// files/ is refused, naming the missing file.
func TestRestoreMissingBlob(t *testing.T) {
	testutil.RequireRoot(t)
	img := handMade(t)
	img.Process.FDs = []core.FD{{FD: 3, Kind: core.FDPipe, Pipe: 1, Data: core.FilesDir + "/pipe-1"}}
	img.Blobs = map[string]core.Blob{core.FilesDir + "/pipe-1": {Size: 3, SHA256: strings.Repeat("0", 64)}}
	dir := write(t, img)
	err := refuse(t, dir, img.Process.PID)
	requireImageError(t, err, filepath.Join(dir, core.FilesDir, "pipe-1"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not fs.ErrNotExist", err)
	}
}

// TestRestorePageFileSize: page data shorter or longer than recorded.
func TestRestorePageFileSize(t *testing.T) {
	testutil.RequireRoot(t)
	img := handMade(t)
	img.Pages.Size = 4096
	dir := write(t, img)
	requireImageError(t, refuse(t, dir, img.Process.PID), filepath.Join(dir, core.PagesFile))
}
