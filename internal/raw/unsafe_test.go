package raw

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// unsafePath is spelled in two parts so that a grep for the quoted import
// path finds real imports only.
const unsafePath = "un" + "safe"

// TestUnsafeOnlyHere keeps every use of unsafe in the module in this
// package's *_unsafe.go files, as the package doc says (the linter rule of
// cilium/ebpf, as a test): a pointer turned into a uintptr anywhere else
// fails it.
func TestUnsafeOnlyHere(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	here, _ := filepath.Abs(".")
	fset := token.NewFileSet()
	seen := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		seen++
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p != unsafePath {
				continue
			}
			if filepath.Dir(path) != here || !strings.HasSuffix(path, "_unsafe.go") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s imports unsafe: only internal/raw/*_unsafe.go may", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 100 {
		t.Fatalf("read %d Go files under %s: not the module", seen, root)
	}
}
