package migrate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/source"
)

// TestDumpDir: the directory a dump writes to is created if missing, must
// be empty unless Force, and a failed dump leaves nothing behind.
func TestDumpDir(t *testing.T) {
	ok := func(_ context.Context, opts source.DumpOptions) (*source.DumpReport, error) {
		os.WriteFile(filepath.Join(opts.Dir, core.MetaFile), []byte("{}"), 0o600)
		return &source.DumpReport{PID: opts.PID}, nil
	}
	failing := func(_ context.Context, opts source.DumpOptions) (*source.DumpReport, error) {
		os.WriteFile(filepath.Join(opts.Dir, core.PagesFile), []byte("partial"), 0o600)
		return nil, errors.New("boom")
	}
	unexpected := func(context.Context, source.DumpOptions) (*source.DumpReport, error) {
		t.Error("dump called")
		return nil, errors.New("unexpected")
	}
	ctx := context.Background()

	// A non-empty directory is refused, and left alone.
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "mine.txt"), []byte("x"), 0o600)
	if _, err := dump(ctx, 1, full, DumpOptions{}, unexpected); err == nil || !strings.Contains(err.Error(), "mine.txt") {
		t.Errorf("non-empty dir: %v", err)
	}
	// Force accepts it, replaces the image and keeps other files.
	os.WriteFile(filepath.Join(full, core.PagesFile), []byte("old"), 0o600)
	if _, err := dump(ctx, 1, full, DumpOptions{Force: true}, ok); err != nil {
		t.Errorf("Force: %v", err)
	}
	if _, err := os.Stat(filepath.Join(full, core.PagesFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Force left the old pages file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(full, "mine.txt")); err != nil {
		t.Errorf("Force removed a file that is not part of an image: %v", err)
	}

	// A file is not a directory.
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o600)
	if _, err := dump(ctx, 1, file, DumpOptions{}, unexpected); err == nil {
		t.Error("a file taken as the directory")
	}

	// A new directory is made; a failed dump into it removes it.
	fresh := filepath.Join(t.TempDir(), "new")
	var made bool
	if _, err := dump(ctx, 1, fresh, DumpOptions{}, func(ctx context.Context, opts source.DumpOptions) (*source.DumpReport, error) {
		fi, err := os.Stat(opts.Dir)
		made = err == nil && fi.IsDir()
		return failing(ctx, opts)
	}); err == nil || err.Error() != "boom" {
		t.Errorf("failed dump: %v", err)
	}
	if !made {
		t.Error("the directory was not made")
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed dump left its new directory: %v", err)
	}
	// ... and into an existing empty one, removes what it wrote there.
	empty := t.TempDir()
	dump(ctx, 1, empty, DumpOptions{}, failing)
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("failed dump left %v", ents)
	}
}
