package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/target"
)

// copyExe copies the counter workload's binary to a directory of the
// test's, as another installation of the same program would be.
func copyExe(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(testutil.Build(t, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "counter")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// TestRestoreSameContentsOtherTime: an executable with the contents it had
// at the dump is taken by the restore even if its time changed (the same
// package installed again, or copied to another host without its time);
// one whose contents differ at the same size is refused, naming it.
func TestRestoreSameContentsOtherTime(t *testing.T) {
	testutil.RequireRoot(t)
	exe := copyExe(t)
	p := testutil.Start(t, exe, "-m", "4")
	p.WaitLine(t, short, 0, "ready")
	dir, img := dumpKill(t, p, "")
	if len(img.Process.Exe.SHA256) != 64 {
		t.Fatalf("image: executable %+v without its content hash", img.Process.Exe)
	}
	for _, v := range img.Process.VMAs {
		if v.File != nil && v.File.Path == exe && v.File.SHA256 != img.Process.Exe.SHA256 {
			t.Errorf("area %#x-%#x of the executable: hash %q, the executable's %q", v.Start, v.End, v.File.SHA256, img.Process.Exe.SHA256)
		}
	}
	// Reinstalled: same contents, a new inode and time.
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	tmp := exe + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(tmp, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	r.WaitTick(t, short, last+3)
	stopMigrated(t, r)

	// Another program of the same size at the same path.
	p2 := testutil.Start(t, exe, "-m", "4")
	p2.WaitLine(t, short, 0, "ready")
	dir2, _ := dumpKill(t, p2, "")
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	_, err = target.Restore(context.Background(), target.RestoreOptions{Dir: dir2, Logger: testLogger(t)})
	var ie *core.ImageError
	if !errors.As(err, &ie) || ie.File != exe || !strings.Contains(ie.Reason, "differs") {
		t.Fatalf("restore: %v (%T), want an ImageError saying %s differs", err, err, exe)
	}
}
