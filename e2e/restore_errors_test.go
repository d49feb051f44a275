package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// copyTree copies the image directory src to a new directory.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// treeListing lists every file under dir with its size.
func treeListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, path)
		out = append(out, fmt.Sprintf("%s %d", rel, info.Size()))
		return nil
	})
	return out
}

// editMeta rewrites image.json through a generic map.
func editMeta(t *testing.T, dir string, edit func(m map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, core.MetaFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// json.Number keeps 64-bit values (RLIM_INFINITY) exact.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// restoreFails restores dir, which must fail, and checks that nothing was
// left behind and that no process with the image's PID was ever created:
// the image must be validated before anything is built. It returns the
// error.
func restoreFails(t *testing.T, dir string, pid int) error {
	t.Helper()
	return restoreFailsAt(t, dir, pid, false)
}

// restoreFailsFilling is restoreFails for damage found as the pages are
// read (a frame of the page stream): the process may have been created
// by then (stopped, as the restore builds it), but must be gone after.
func restoreFailsFilling(t *testing.T, dir string, pid int) error {
	t.Helper()
	return restoreFailsAt(t, dir, pid, true)
}

func restoreFailsAt(t *testing.T, dir string, pid int, filling bool) error {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Fatalf("pid %d is taken before the restore", pid)
	}
	kids := testutil.Children()
	listing := treeListing(t, dir)

	// Watch for a process with the PID while the restore runs.
	var seen atomic.Bool
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				seen.Store(true)
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	rep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	close(stop)
	<-done

	if err == nil {
		t.Errorf("restore of a bad image succeeded: %+v", rep)
	} else {
		t.Logf("refused as expected: %v", err)
	}
	if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr == nil {
		if testutil.Parent(t, pid) == os.Getpid() {
			testutil.Adopt(t, pid, "").Kill(t)
		}
		t.Errorf("a process with pid %d exists after the failed restore", pid)
	} else if seen.Load() && !filling {
		t.Errorf("the restore created a process with pid %d before it found the image bad (the image must be validated before anything is created)", pid)
	}
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children of the test process after the failed restore: %v, before %v (a husk left behind?)", got, kids)
	}
	if got := treeListing(t, dir); !slices.Equal(got, listing) {
		t.Errorf("the failed restore changed the image directory:\nbefore %v\nafter  %v", listing, got)
	}
	return err
}

// requireFileError wants an error that names path in a typed field: a
// *core.ImageError or a *fs.PathError.
func requireFileError(t *testing.T, err error, path string) {
	t.Helper()
	var ie *core.ImageError
	var pe *fs.PathError
	switch {
	case errors.As(err, &ie):
		if ie.File != path {
			t.Errorf("ImageError names %q, want %q", ie.File, path)
		}
	case errors.As(err, &pe):
		if pe.Path != path {
			t.Errorf("PathError names %q, want %q", pe.Path, path)
		}
	default:
		t.Errorf("error %v (%T) names no file in a typed field (*core.ImageError or *fs.PathError), want %s", err, err, path)
	}
}

// requireImageError wants a *core.ImageError about the file path.
func requireImageError(t *testing.T, err error, path string) {
	t.Helper()
	var ie *core.ImageError
	if !errors.As(err, &ie) {
		t.Errorf("error %v (%T) is not a *core.ImageError", err, err)
		return
	}
	if ie.File != path {
		t.Errorf("ImageError names %q, want %q", ie.File, path)
	}
}

// TestRestoreRefusesBadImages: damaged or stale images are refused with a
// typed error naming the file and the problem, before anything is created
// (a damaged frame of the pages: before the process runs, leaving nothing).
func TestRestoreRefusesBadImages(t *testing.T) {
	testutil.RequireRoot(t)
	// The workload runs from a copy of its binary, which the test may change.
	exe := testutil.CopyBinary(t, testutil.Build(t, "counter"), t.TempDir())
	cwd := filepath.Join(t.TempDir(), "cwd")
	if err := os.Mkdir(cwd, 0o755); err != nil {
		t.Fatal(err)
	}
	p := testutil.StartWith(t, testutil.Options{Dir: cwd}, exe, "-m", "16")
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	// Uncompressed pages: a flipped byte lands in page data, not in a
	// compressed block whose decoder might notice first.
	orig, img := dumpKill(t, p, "none")
	pid := img.Process.PID
	meta := func(dir string) string { return filepath.Join(dir, core.MetaFile) }
	pages := func(dir string) string { return filepath.Join(dir, core.PagesFile) }

	t.Run("image.json missing", func(t *testing.T) {
		dir := copyTree(t, orig)
		os.Remove(meta(dir))
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v is not fs.ErrNotExist", err)
		}
	})
	t.Run("image.json not JSON", func(t *testing.T) {
		dir := copyTree(t, orig)
		os.WriteFile(meta(dir), []byte("{\"kind\": \"migrate-image\", \"version\": 1,"), 0o600)
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		if !errors.Is(err, core.ErrNotImage) {
			t.Errorf("error %v is not core.ErrNotImage", err)
		}
	})
	t.Run("image.json of another kind", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) { m["kind"] = "criu-image" })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		if !errors.Is(err, core.ErrNotImage) {
			t.Errorf("error %v is not core.ErrNotImage", err)
		}
	})
	t.Run("image.json wrong version", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) { m["version"] = core.ImageVersion + 1 })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		if !errors.Is(err, core.ErrBadVersion) {
			t.Errorf("error %v is not core.ErrBadVersion", err)
		}
	})
	t.Run("image.json from another architecture", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) { m["arch"] = "arm64" })
		requireImageError(t, restoreFails(t, dir, pid), meta(dir))
	})
	// Another kernel's vdso is proxied (TestVDSOOtherKernel); a vdso
	// whose recorded hash is not that of the copy the image keeps of it
	// is a damaged image.
	t.Run("vdso hash not its copy's", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) {
			for _, v := range m["process"].(map[string]any)["vmas"].([]any) {
				if v := v.(map[string]any); v["kind"] == core.VMAVDSO {
					v["hash"] = strings.Repeat("0", 64)
				}
			}
		})
		err := restoreFails(t, dir, pid)
		if !errors.Is(err, core.ErrInconsistent) {
			t.Errorf("error %v (%T) is not core.ErrInconsistent", err, err)
		}
	})
	t.Run("pages.img missing", func(t *testing.T) {
		dir := copyTree(t, orig)
		os.Remove(pages(dir))
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, pages(dir))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v is not fs.ErrNotExist", err)
		}
	})
	t.Run("pages.img truncated", func(t *testing.T) {
		dir := copyTree(t, orig)
		if err := os.Truncate(pages(dir), img.Pages.Size/2); err != nil {
			t.Fatal(err)
		}
		requireImageError(t, restoreFails(t, dir, pid), pages(dir))
	})
	t.Run("pages.img truncated, size in image.json matching", func(t *testing.T) {
		// The recorded size cannot be the only defence: the stream itself
		// must be found short.
		dir := copyTree(t, orig)
		size := img.Pages.Size * 3 / 5
		if err := os.Truncate(pages(dir), size); err != nil {
			t.Fatal(err)
		}
		editMeta(t, dir, func(m map[string]any) { m["pages"].(map[string]any)["size"] = size })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, pages(dir))
		if !errors.Is(err, pagestream.ErrTruncated) {
			t.Errorf("error %v is not pagestream.ErrTruncated", err)
		}
	})
	t.Run("pages.img with a flipped byte", func(t *testing.T) {
		dir := copyTree(t, orig)
		b, err := os.ReadFile(pages(dir))
		if err != nil {
			t.Fatal(err)
		}
		// Late in the stream: the restore, which checks the frames as it
		// reads them, has built most of the process by then, and must
		// still refuse it whole, leaving nothing.
		b[len(b)*9/10] ^= 0x10
		if err := os.WriteFile(pages(dir), b, 0o600); err != nil {
			t.Fatal(err)
		}
		err = restoreFailsFilling(t, dir, pid)
		requireImageError(t, err, pages(dir))
		var fe *pagestream.FrameError
		if !errors.As(err, &fe) {
			t.Errorf("error %v carries no *pagestream.FrameError", err)
		} else if !errors.Is(err, pagestream.ErrChecksum) {
			t.Logf("flipped byte reported as %v (not a checksum error)", fe.Err)
		}
	})
	t.Run("executable changed since the dump", func(t *testing.T) {
		// The same size and another content (a time alone no longer
		// tells: TestRestoreSameContentsOtherTime).
		dir := copyTree(t, orig)
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(exe)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 0xff
		if err := os.WriteFile(exe+".new", b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(exe+".new", exe); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			b[len(b)-1] ^= 0xff
			os.WriteFile(exe+".new", b, 0o755)
			os.Chtimes(exe+".new", time.Time{}, fi.ModTime())
			os.Rename(exe+".new", exe)
		})
		requireImageError(t, restoreFails(t, dir, pid), exe)
	})
	t.Run("executable gone", func(t *testing.T) {
		dir := copyTree(t, orig)
		moved := exe + ".moved"
		if err := os.Rename(exe, moved); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Rename(moved, exe) })
		err := restoreFails(t, dir, pid)
		requireFileError(t, err, exe)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v is not fs.ErrNotExist", err)
		}
	})
	t.Run("working directory gone", func(t *testing.T) {
		dir := copyTree(t, orig)
		moved := cwd + ".moved"
		if err := os.Rename(cwd, moved); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Rename(moved, cwd) })
		err := restoreFails(t, dir, pid)
		requireFileError(t, err, cwd)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v is not fs.ErrNotExist", err)
		}
	})
	t.Run("open file gone", func(t *testing.T) {
		dir := copyTree(t, orig)
		moved := p.Log + ".moved"
		if err := os.Rename(p.Log, moved); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Rename(moved, p.Log) })
		err := restoreFails(t, dir, pid)
		requireFileError(t, err, p.Log)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v is not fs.ErrNotExist", err)
		}
	})
	// The undamaged image still restores: the refusals above were about
	// the damage, not the image.
	t.Run("intact image", func(t *testing.T) {
		r := restoreOK(t, copyTree(t, orig), p.Log)
		r.WaitTick(t, short, p.LastTick(t))
	})
}

// TestRestorePIDInUse: restoring while the original still runs (dumped
// with LeaveRunning) is refused with a *target.PIDInUseError naming the
// holder, which is left alone, and nothing is created.
func TestRestorePIDInUse(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "4")
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, LeaveRunning: true, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	before := testutil.Take(t, p.PID)
	kids := testutil.Children()
	listing := treeListing(t, dir)
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var pe *target.PIDInUseError
	if !errors.As(err, &pe) {
		t.Fatalf("restore error %v (%T), want *target.PIDInUseError", err, err)
	}
	if pe.PID != p.PID || pe.Holder != "counter" {
		t.Errorf("PIDInUseError %+v, want pid %d held by %q", pe, p.PID, "counter")
	}
	testutil.RequireRunning(t, p.PID)
	if d := before.Diff(testutil.Take(t, p.PID), 1, 2); d != "" {
		t.Errorf("the process holding the pid changed:\n%s", d)
	}
	p.WaitTick(t, short, p.LastTick(t)+3)
	if got := testutil.Children(); !slices.Equal(got, kids) {
		t.Errorf("children after the refused restore: %v, before %v", got, kids)
	}
	if got := treeListing(t, dir); !slices.Equal(got, listing) {
		t.Errorf("the refused restore changed the image directory:\nbefore %v\nafter  %v", listing, got)
	}
}

// TestRestoreRefusesHostileFiles: files of an image that are not what the
// dump wrote are refused before anything is created, with a typed error
// naming the file: a blob that is a symlink (to /etc/shadow, whose
// contents would become the process's), or reached through a symlinked
// files/; a blob truncated, extended or with a flipped byte (its size and
// SHA-256 are in image.json); a FIFO or a device in place of a blob, of
// pages.img or of image.json, which once hung the restore; and image.json
// keys this build does not know.
func TestRestoreRefusesHostileFiles(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "pipe"), "buffered")
	p.WaitLine(t, short, 0, "chunk 5 ok")
	orig, img := dumpKill(t, p, "")
	pid := img.Process.PID
	var blob string
	for _, fd := range img.Process.FDs {
		if fd.Data != "" {
			blob = fd.Data
		}
	}
	if blob == "" {
		t.Fatal("the image has no pipe data blob; nothing to test")
	}
	if _, ok := img.Blobs[blob]; !ok {
		t.Fatalf("image.json does not list %s", blob)
	}
	meta := func(dir string) string { return filepath.Join(dir, core.MetaFile) }
	requireIs := func(t *testing.T, err, target error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Errorf("error %v is not %v", err, target)
		}
	}
	replace := func(t *testing.T, path string, make func(string) error) {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := make(path); err != nil {
			t.Fatal(err)
		}
	}
	mkfifo := func(path string) error { return syscall.Mkfifo(path, 0o600) }

	t.Run("blob is a symlink to /etc/shadow", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		replace(t, path, func(p string) error { return os.Symlink("/etc/shadow", p) })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("blob is a symlink to a copy of itself", func(t *testing.T) {
		// Same contents, so only the symlink itself is refused.
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		elsewhere := filepath.Join(t.TempDir(), "copy")
		if err := os.Rename(path, elsewhere); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, path); err != nil {
			t.Fatal(err)
		}
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("files/ is a symlink", func(t *testing.T) {
		dir := copyTree(t, orig)
		elsewhere := filepath.Join(t.TempDir(), "files")
		if err := os.Rename(filepath.Join(dir, core.FilesDir), elsewhere); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, filepath.Join(dir, core.FilesDir)); err != nil {
			t.Fatal(err)
		}
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, filepath.Join(dir, blob))
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("blob truncated", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		if err := os.Truncate(path, img.Blobs[blob].Size/2); err != nil {
			t.Fatal(err)
		}
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrBlobMismatch)
	})
	t.Run("blob truncated, size in image.json matching", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		size := img.Blobs[blob].Size / 2
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		editMeta(t, dir, func(m map[string]any) {
			m["blobs"].(map[string]any)[blob].(map[string]any)["size"] = size
		})
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrBlobMismatch)
	})
	t.Run("blob with a flipped byte", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)*2/3] ^= 0x01
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		err = restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrBlobMismatch)
	})
	t.Run("blob is a FIFO", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		replace(t, path, mkfifo)
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("blob is /dev/zero", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, blob)
		// The device itself (1:5), not a symlink to it.
		replace(t, path, func(p string) error { return syscall.Mknod(p, syscall.S_IFCHR|0o600, 1<<8|5) })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("pages.img is a FIFO", func(t *testing.T) {
		dir := copyTree(t, orig)
		path := filepath.Join(dir, core.PagesFile)
		replace(t, path, mkfifo)
		editMeta(t, dir, func(m map[string]any) { m["pages"].(map[string]any)["size"] = 0 })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, path)
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("image.json is a FIFO", func(t *testing.T) {
		dir := copyTree(t, orig)
		replace(t, meta(dir), mkfifo)
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("image.json is a symlink", func(t *testing.T) {
		dir := copyTree(t, orig)
		elsewhere := filepath.Join(t.TempDir(), core.MetaFile)
		if err := os.Rename(meta(dir), elsewhere); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, meta(dir)); err != nil {
			t.Fatal(err)
		}
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		requireIs(t, err, core.ErrNotRegular)
	})
	t.Run("blob not listed in image.json", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) { delete(m["blobs"].(map[string]any), blob) })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		requireIs(t, err, core.ErrInconsistent)
	})
	t.Run("blob named outside the image", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) {
			for _, fd := range m["process"].(map[string]any)["fds"].([]any) {
				if fd := fd.(map[string]any); fd["data"] == blob {
					fd["data"] = "/etc/shadow"
				}
			}
			bl := m["blobs"].(map[string]any)
			bl["/etc/shadow"] = bl[blob]
		})
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		requireIs(t, err, core.ErrInconsistent)
	})
	t.Run("unknown key in image.json", func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) { m["process"].(map[string]any)["fd_limit"] = 5 })
		err := restoreFails(t, dir, pid)
		requireImageError(t, err, meta(dir))
		requireIs(t, err, core.ErrNotImage)
	})
	t.Run("intact image", func(t *testing.T) {
		r := restoreOK(t, copyTree(t, orig), p.Log)
		if done, _ := r.WaitLine(t, long, 0, "done"); done != "done bytes=200000 pipesize=262144 ok" {
			t.Errorf("restored process: %q", done)
		}
	})
}

// TestRestoreRefusesBadValues: values the restore hands to the kernel that
// it would refuse, or take to mean something else, are refused before
// anything is created (they were once found only once the process
// existed, or never): rlimits, itimers, the auxiliary vector, groups, uid
// -1, an fd at fs.nr_open, an inotify watch descriptor whose gap would take
// 2^30 calls to make, madvise advice that would drop the pages written.
func TestRestoreRefusesBadValues(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "4")
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 2)
	orig, img := dumpKill(t, p, "")
	pid := img.Process.PID
	nrOpen := readInt(t, "/proc/sys/fs/nr_open")
	proc := func(m map[string]any) map[string]any { return m["process"].(map[string]any) }
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
	}{
		{"rlimit soft above hard", func(m map[string]any) {
			proc(m)["rlimits"] = []any{map[string]any{"resource": 7, "cur": 4096, "max": 1024}}
		}},
		{"rlimit resource unknown", func(m map[string]any) {
			proc(m)["rlimits"] = []any{map[string]any{"resource": 99, "cur": 1, "max": 1}}
		}},
		{"itimer unknown", func(m map[string]any) {
			proc(m)["itimers"] = []any{map[string]any{"which": 7, "interval_us": 0, "remaining_us": 10}}
		}},
		{"itimer negative", func(m map[string]any) {
			proc(m)["itimers"] = []any{map[string]any{"which": 0, "interval_us": -5, "remaining_us": 10}}
		}},
		{"auxv odd", func(m map[string]any) {
			mm := proc(m)["mm"].(map[string]any)
			mm["auxv"] = append(mm["auxv"].([]any), json.Number("6"))
		}},
		{"auxv too long", func(m map[string]any) {
			mm := proc(m)["mm"].(map[string]any)
			long := make([]any, core.MaxAuxvWords+2)
			for i := range long {
				long[i] = 0
			}
			mm["auxv"] = long
		}},
		{"too many groups", func(m map[string]any) {
			g := make([]any, core.MaxGroups+1)
			for i := range g {
				g[i] = 0
			}
			proc(m)["creds"].(map[string]any)["groups"] = g
		}},
		{"uid -1", func(m map[string]any) {
			proc(m)["creds"].(map[string]any)["uid"] = []any{0, uint32(1<<32 - 1), 0}
		}},
		{"mm out of order", func(m map[string]any) {
			mm := proc(m)["mm"].(map[string]any)
			mm["start_code"], mm["end_code"] = mm["end_code"], mm["start_code"]
		}},
		{"inotify watch 2^30", func(m map[string]any) {
			proc(m)["fds"] = append(proc(m)["fds"].([]any), map[string]any{"fd": 50, "kind": "inotify", "flags": 0, "cloexec": false, "pos": 0,
				"inotify": []any{map[string]any{"wd": 1 << 30, "path": "/", "mask": 2}}})
		}},
		{"madvise MADV_DONTNEED", func(m map[string]any) {
			for _, v := range proc(m)["vmas"].([]any) {
				if v := v.(map[string]any); v["kind"] == core.VMAAnon {
					v["madvise"] = []any{4}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyTree(t, orig)
			editMeta(t, dir, tc.edit)
			err := restoreFails(t, dir, pid)
			if !errors.Is(err, core.ErrInconsistent) {
				t.Errorf("error %v is not core.ErrInconsistent", err)
			}
		})
	}
	// fd numbers: one at fs.nr_open, or above an RLIMIT_NOFILE migrate
	// cannot raise (less the fds the restore puts above the highest), is
	// refused first; the highest this host allows is restored (the
	// child's RLIMIT_NOFILE is raised for it, then set to the image's).
	high := nrOpen - 1 - target.FDsAbove
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	capEff, err := strconv.ParseUint(testutil.StatusField(t, os.Getpid(), "CapEff"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if capEff&(1<<24) == 0 && lim.Max < uint64(nrOpen) { // CAP_SYS_RESOURCE
		high = int(lim.Max) - 1 - target.FDsAbove
	}
	for _, bad := range []int{nrOpen, high + 1} {
		t.Run(fmt.Sprintf("fd %d", bad), func(t *testing.T) {
			dir := copyTree(t, orig)
			editMeta(t, dir, func(m map[string]any) {
				fds := proc(m)["fds"].([]any)
				fds[len(fds)-1].(map[string]any)["fd"] = bad
			})
			err := restoreFails(t, dir, pid)
			var he *target.HostLimitError
			if !errors.As(err, &he) {
				t.Errorf("error %v (%T) is not a *target.HostLimitError", err, err)
			}
		})
	}
	t.Run(fmt.Sprintf("fd %d", high), func(t *testing.T) {
		dir := copyTree(t, orig)
		editMeta(t, dir, func(m map[string]any) {
			fds := proc(m)["fds"].([]any)
			var last map[string]any
			for _, f := range fds {
				if f := f.(map[string]any); f["kind"] == core.FDFile || f["kind"] == core.FDChar {
					last = f
				}
			}
			if last == nil {
				t.Fatal("no file fd in the image")
			}
			if last["key"] == nil {
				last["key"] = "shared-high"
			}
			dup := map[string]any{}
			for k, v := range last {
				dup[k] = v
			}
			dup["fd"] = high
			proc(m)["fds"] = append(fds, dup)
		})
		r := restoreOK(t, dir, p.Log)
		if _, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", r.PID, high)); err != nil {
			t.Errorf("fd %d of the restored process: %v", high, err)
		}
		r.WaitTick(t, short, p.LastTick(t)+1)
	})
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if _, err := fmt.Sscan(string(b), &n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// huskPIDs lists the processes running migrate's husk.
// ourHusks lists the husks (target's helper process, run from a memfd
// named migrate-husk) that are children of this test process: a husk a
// stopped restore left behind is reparented here, the subreaper
// (testutil.Main). Husks of restores that other packages' tests run at
// the same time are not counted.
func ourHusks() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); !strings.Contains(exe, "migrate-husk") {
			continue
		}
		if st, err := proc.ReadStat(pid); err == nil && st.PPID == os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

// TestRestoreSIGTERM: `migrate restore` stopped by SIGTERM in a slow step
// (here: remaking inotify watch descriptors up to core.MaxInotifyWD for 8
// inotify fds, some 8 x 4 s of inotify_add_watch) exits at once with an
// error, and leaves nothing: no process with the image's PID, no husk.
// (An inotify watch number of 2^30 once spun a restore for 10 minutes
// that SIGTERM did not stop.)
func TestRestoreSIGTERM(t *testing.T) {
	testutil.RequireRoot(t)
	watched := t.TempDir()
	p := testutil.Start(t, testutil.Build(t, "inotify"), watched)
	p.WaitLine(t, short, 0, "ready")
	orig, img := dumpKill(t, p, "")
	pid := img.Process.PID
	dir := copyTree(t, orig)
	editMeta(t, dir, func(m map[string]any) {
		pm := m["process"].(map[string]any)
		fds := pm["fds"].([]any)
		for i := 0; i < 8; i++ {
			fds = append(fds, map[string]any{"fd": 100 + i, "kind": core.FDInotify, "flags": 0, "cloexec": true, "pos": 0,
				"inotify": []any{map[string]any{"wd": core.MaxInotifyWD, "path": watched, "mask": 2}}})
		}
		pm["fds"] = fds
	})
	var stderr lockedBuffer
	cmd := exec.Command(buildMigrate(t), "restore", "--dir", dir, "-v")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	// The fds are restored after the protections are set: wait for that
	// step's log line, then for the restore to be in the inotify loop.
	testutil.WaitFor(t, long, "the restore to reach its fds", func() bool {
		return strings.Contains(stderr.String(), `step="set protections"`)
	})
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		took := time.Since(sent)
		t.Logf("exited %v after %v:\n%s", err, took, stderr.String())
		if err == nil {
			t.Error("migrate restore exited 0 after SIGTERM")
		}
		if took > 5*time.Second {
			t.Errorf("migrate restore took %v to stop after SIGTERM", took)
		}
	case <-time.After(long):
		t.Fatalf("migrate restore still runs %v after SIGTERM:\n%s", long, stderr.String())
	}
	// Killed: gone, or a zombie for its parent to reap (this test, the
	// subreaper of what it starts).
	if !testutil.Poll(short, func() bool {
		st, err := testutil.State(pid)
		return err != nil || st == 'Z'
	}) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		t.Fatalf("pid %d is left after the restore stopped:\n%s", pid, st)
	}
	if testutil.Parent(t, pid) == os.Getpid() {
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}
	testutil.WaitFor(t, short, "no husk left", func() bool { return len(ourHusks()) == 0 })
}

// TestRestoreRefusesChangedFile: a file the process had open (not with
// O_APPEND) that changed since the dump, in size or in time, is refused by
// name before anything is created: the process would carry on at its old
// offset in another file. Put back as it was, to the nanosecond, the same
// image restores, and the process writes on where it was.
func TestRestoreRefusesChangedFile(t *testing.T) {
	testutil.RequireRoot(t)
	p, out, _ := startFiles(t)
	p.WaitTick(t, short, 3)
	dir, img := dumpKill(t, p, "")
	last := p.LastTick(t)
	var ref *core.FileRef
	for _, fd := range img.Process.FDs {
		if fd.File != nil && fd.File.Path == out {
			ref = fd.File
		}
	}
	if ref == nil {
		t.Fatalf("no fd of %s in the image", out)
	}
	orig, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(0, ref.Mtime)

	// Longer: someone wrote to it.
	if err := os.WriteFile(out, append(slices.Clone(orig), "intruder\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	requireImageError(t, restoreFails(t, dir, img.Process.PID), out)
	// The same size, another time: rewritten in place.
	if err := os.WriteFile(out, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(out, mtime, mtime.Add(time.Microsecond)); err != nil {
		t.Fatal(err)
	}
	requireImageError(t, restoreFails(t, dir, img.Process.PID), out)

	// As it was: restored, and it writes on after its records.
	if err := os.Chtimes(out, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	r := restoreOK(t, dir, p.Log)
	r.WaitTick(t, short, last+2)
	r.Kill(t)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, orig) || bytes.Contains(got, []byte("intruder")) {
		t.Errorf("%s after the restore:\n%s\nwant the dumped records, then more", out, got)
	}
}
