package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestInotify: a process reading inotify events gets them after a restore,
// under the same watch descriptors (with a gap between them kept).
func TestInotify(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	p := testutil.Start(t, testutil.Build(t, "inotify"), dir)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	if ready != "ready dir=1 file=3" {
		t.Fatalf("workload: %q", ready)
	}
	imgDir, img := dumpKill(t, p, "")
	var watches []core.InotifyWatch
	for _, fd := range img.Process.FDs {
		if fd.Kind == core.FDInotify {
			watches = fd.Inotify
		}
	}
	sort.Slice(watches, func(i, j int) bool { return watches[i].WD < watches[j].WD })
	if len(watches) != 2 || watches[0].Path != dir || watches[1].Path != filepath.Join(dir, "watched") {
		t.Fatalf("image holds inotify watches %+v, want %s and its file", watches, dir)
	}
	r := restoreOK(t, imgDir, p.Log)
	from := len(r.Lines(t))
	if err := os.WriteFile(filepath.Join(dir, "watched"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.WaitLine(t, short, from, "event 3 0x2 -") // IN_MODIFY on the file's watch
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.WaitLine(t, short, from, "event 1 0x100 new") // IN_CREATE in the directory
}
