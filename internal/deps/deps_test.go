package deps

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/procmig/migrate/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// rule constrains the packages Pkg names. Patterns are import paths,
// relative to the module for its own packages ("source", "core/proc");
// "X/..." is X and every package below it.
type rule struct {
	Pkg    string
	Except []string // packages of Pkg the rule does not hold for
	// Forbid: what the package must not depend on, directly or not, with
	// its tests (go list -deps -test).
	Forbid []string
	// Direct: what the package and its tests must not import themselves
	// (they may through another package).
	Direct []string
	// Only, if set: the only packages outside the standard library the
	// package itself (not its tests) may depend on.
	Only []string
	Why  string
}

// The process side of core: the Linux machinery, as opposed to the image
// model (core).
var processSide = []string{"core/proc", "core/ptrace", "core/kernel", "core/netlock", "core/netaddr", "core/netconf", "core/hook", "core/reap"}

var rules = []rule{
	{Pkg: "source/...", Forbid: []string{"target/...", "cmd/...", "e2e/..."},
		Why: "source and target never import each other: they meet through core, internal/handoff, transport and pagestream"},
	{Pkg: "target/...", Forbid: []string{"source/...", "cmd/...", "e2e/..."},
		Why: "source and target never import each other: they meet through core, internal/handoff, transport and pagestream"},
	{Pkg: "internal/handoff/...", Forbid: append([]string{"source/...", "target/...", "pagestream/...", "cmd/...", "e2e/..."}, processSide...),
		Why: "the handoff is the protocol both sides share: it knows no process, only the actions the sides give it"},
	{Pkg: "transport", Only: []string{"github.com/hashicorp/yamux"},
		Forbid: append([]string{"core", "pagestream/...", "internal/handoff/...", "source/...", "target/...", "cmd/...", "e2e/..."}, processSide...),
		Why:    "transport knows nothing of processes or pages"},
	{Pkg: "pagestream", Only: []string{"github.com/klauspost/compress/..."},
		Forbid: append([]string{"core", "transport/...", "github.com/hashicorp/yamux", "internal/handoff/...", "source/...", "target/...", "cmd/...", "e2e/..."}, processSide...),
		Why:    "pagestream is a format: it knows nothing of processes or transports"},
	{Pkg: "core", Only: []string{},
		Why: "core is the image model: plain data, the standard library only"},
	{Pkg: "core/...", Forbid: []string{"transport/...", "github.com/hashicorp/yamux", "pagestream/...", "internal/handoff/...", "source/...", "target/...", "cmd/...", "e2e/..."},
		Why: "core is below everything: the image model and the Linux machinery"},
	{Pkg: "internal/raw", Only: []string{"golang.org/x/sys/unix"},
		Why: "internal/raw is the one door to raw system calls (and unsafe): every package may use it, so it uses nothing of migrate"},
	{Pkg: "source/track", Forbid: []string{"source", "source/sockets/...", "transport/...", "pagestream/...", "internal/handoff/...", "target/...", "cmd/...", "e2e/..."},
		Why: "the dirty trackers know a process and its pages, not dumps, streams or the network: source uses them through the Tracker interface"},
	{Pkg: "internal/filesync", Forbid: append([]string{"transport/...", "pagestream/...", "internal/handoff/...", "source/...", "target/...", "cmd/...", "e2e/..."}, processSide...),
		Why: "filesync is paths and files: the question whether a target shares them and the sync stream, no process, no network (its stream is any io.Reader)"},
	{Pkg: "internal/testutil/...", Forbid: []string{"source/...", "target/...", "internal/handoff/...", "cmd/...", "e2e/..."},
		Why: "every package's tests use testutil: it must not depend on them"},
	{Pkg: "...", Except: []string{"transport"}, Direct: []string{"github.com/hashicorp/yamux"},
		Why: "yamux is configured in one place, transport"},
}

// pkg is what go list says of one package of the module.
type pkg struct {
	imports, deps         []string // of the package itself
	testImports, testDeps []string // of its test files, and its test binary
}

// listPackages runs go list over the module, tests included.
func listPackages(t *testing.T) (module string, pkgs map[string]*pkg) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-m").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	module = strings.TrimSpace(string(out))
	out, err = exec.Command(goTool, "list", "-test",
		"-f", "{{.ImportPath}}\t{{join .Imports \" \"}}\t{{join .Deps \" \"}}", module+"/...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	pkgs = map[string]*pkg{}
	get := func(path string) *pkg {
		if pkgs[path] == nil {
			pkgs[path] = &pkg{}
		}
		return pkgs[path]
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimSuffix(line, "\n"), "\t")
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		path, imports, deps := f[0], paths(f[1]), paths(f[2])
		switch name, variant, _ := strings.Cut(path, " "); {
		case strings.HasSuffix(path, ".test"): // the test binary
			get(strings.TrimSuffix(path, ".test")).testDeps = deps
		case variant != "": // the package compiled with its tests, or its external tests
			p := get(strings.TrimSuffix(name, "_test"))
			p.testImports = append(p.testImports, imports...)
		default:
			p := get(path)
			p.imports, p.deps = imports, deps
		}
	}
	return module, pkgs
}

// paths splits a list of import paths, without go list's " [P.test]"
// variant suffixes.
func paths(s string) []string {
	var out []string
	for _, f := range strings.Fields(s) {
		if !strings.HasPrefix(f, "[") {
			out = append(out, f)
		}
	}
	return out
}

// match says whether import path p matches pattern (module-relative for
// the module's own packages).
func match(module, pattern, p string) bool {
	if first, _, _ := strings.Cut(pattern, "/"); !strings.Contains(first, ".") && pattern != "..." {
		pattern = module + "/" + pattern
	} else if pattern == "..." {
		pattern = module + "/..."
	}
	if tree, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == tree || strings.HasPrefix(p, tree+"/")
	}
	return p == pattern
}

func matchAny(module string, patterns []string, p string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return match(module, pat, p) })
}

// standard: a path of the standard library (no dot in its first element).
func standard(p string) bool {
	first, _, _ := strings.Cut(p, "/")
	return !strings.Contains(first, ".")
}

// TestDeps checks every rule against every package of the module.
func TestDeps(t *testing.T) {
	module, pkgs := listPackages(t)
	names := slices.Sorted(func(yield func(string) bool) {
		for name := range pkgs {
			if !yield(name) {
				return
			}
		}
	})
	for _, r := range rules {
		matched := false
		for _, name := range names {
			if !match(module, r.Pkg, name) || matchAny(module, r.Except, name) {
				continue
			}
			matched = true
			p := pkgs[name]
			short := strings.TrimPrefix(name, module+"/")
			// via names the imports of name through which it reaches dep.
			via := func(dep string, imports []string) string {
				var through []string
				for _, i := range imports {
					if i == dep || (pkgs[i] != nil && slices.Contains(pkgs[i].deps, dep)) {
						through = append(through, strings.TrimPrefix(i, module+"/"))
					}
				}
				return strings.Join(slices.Compact(slices.Sorted(slices.Values(through))), ", ")
			}
			for _, dep := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(p.deps), p.testDeps...)))) {
				if matchAny(module, r.Forbid, dep) && dep != name {
					t.Errorf("%s (tests included) depends on %s, through %s: %s", short, dep, via(dep, append(slices.Clone(p.imports), p.testImports...)), r.Why)
				}
			}
			for _, dep := range append(slices.Clone(p.imports), p.testImports...) {
				if matchAny(module, r.Direct, dep) {
					t.Errorf("%s (tests included) imports %s: %s", short, dep, r.Why)
				}
			}
			if r.Only != nil {
				for _, dep := range p.deps {
					if !standard(dep) && !matchAny(module, r.Only, dep) {
						t.Errorf("%s depends on %s, through %s: %s", short, dep, via(dep, p.imports), r.Why)
					}
				}
			}
		}
		if !matched {
			t.Errorf("rule for %s matches no package: is its name out of date?", r.Pkg)
		}
	}
}
