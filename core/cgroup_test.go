package core

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzCgroupLimits: whatever an image's cgroup_limits hold, validation
// does not panic, and what it accepts names only cgroups below the root,
// by clean absolute paths, and values a limit file takes as one write.
func FuzzCgroupLimits(f *testing.F) {
	f.Add([]byte(`[{"path":"/a/b","controllers":["memory"],"files":{"memory.max":"1048576","cpu.max":"max 100000"}}]`))
	f.Add([]byte(`[{"path":"/../a","files":{"cgroup.procs":"1"}}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cls []CgroupLimits
		if json.Unmarshal(b, &cls) != nil {
			return
		}
		if validateCgroupLimits(cls) != nil {
			return
		}
		for _, c := range cls {
			if validPath(c.Path) != nil || c.Path == "/" {
				t.Fatalf("accepted path %q", c.Path)
			}
			for name, v := range c.Files {
				if strings.ContainsAny(v, "\n\x00+-") || strings.Contains(name, "/") {
					t.Fatalf("accepted %s %q", name, v)
				}
			}
		}
	})
}

// TestValidateCgroupLimits: the cgroups a restore may create and write
// limits into.
func TestValidateCgroupLimits(t *testing.T) {
	good := []CgroupLimits{{Path: "/a/b", Controllers: []string{"memory", "pids"}, Files: map[string]string{"memory.max": "1048576", "cpu.max": "max 100000", "pids.max": "max"}}}
	if err := validateCgroupLimits(good); err != nil {
		t.Fatalf("good: %v", err)
	}
	for name, cl := range map[string]CgroupLimits{
		"root":          {Path: "/"},
		"relative":      {Path: "a"},
		"dot-dot":       {Path: "/a/../b"},
		"other file":    {Path: "/a", Files: map[string]string{"cgroup.procs": "1"}},
		"newline":       {Path: "/a", Files: map[string]string{"memory.max": "1\n+cpu"}},
		"empty value":   {Path: "/a", Files: map[string]string{"memory.max": ""}},
		"controller":    {Path: "/a", Controllers: []string{"io"}},
		"path with nul": {Path: "/a\x00b"},
	} {
		if err := validateCgroupLimits([]CgroupLimits{cl}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := validateCgroupLimits([]CgroupLimits{{Path: "/a"}, {Path: "/a"}}); err == nil {
		t.Error("a cgroup listed twice: accepted")
	}
}
