package osthread

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockOnlyHere: migrate's code (tests aside) locks a goroutine to its
// thread only through this package, so that no thread it changes can be
// the main one. A locked goroutine elsewhere would bring back the bug
// this package fixed.
func TestLockOnlyHere(t *testing.T) {
	root := filepath.Join("..", "..")
	allowed := map[string]string{
		"internal/osthread/osthread.go": "this package",
		"e2e/cmd/hog/main.go":           "a load generator of its own, whose spinning threads change nothing",
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "e2e/testdata" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || allowed[rel] != "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			code, _, _ := strings.Cut(line, "//")
			if strings.Contains(code, "runtime.LockOSThread()") {
				t.Errorf("%s:%d: runtime.LockOSThread outside internal/osthread (use osthread.Go or Run)", rel, i+1)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
