package core

import (
	"fmt"
	"slices"
	"strings"
)

// CgroupLimits are the limits of one cgroup v2 cgroup of the processes
// (not the root, not the dumping migrate's), as a service manager sets
// them: a restore makes the cgroup with them where the target has none,
// and compares them where it has one.
type CgroupLimits struct {
	// Path is the cgroup, from the root of the unified hierarchy (as
	// Cgroup.Path).
	Path string `json:"path"`
	// Controllers are those of CgroupLimitControllers that the parent
	// enabled for it (its cgroup.subtree_control).
	Controllers []string `json:"controllers,omitempty"`
	// Files are the limit files of CgroupLimitFiles the cgroup has, by
	// name, with their contents (without the newline).
	Files map[string]string `json:"files,omitempty"`
}

// CgroupLimitControllers are the cgroup v2 controllers whose limits an
// image carries.
var CgroupLimitControllers = []string{"cpu", "memory", "pids"}

// CgroupLimitFiles are the limit files an image carries, in the order a
// restore writes them.
var CgroupLimitFiles = []string{
	"memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.max",
	"cpu.max", "cpu.weight", "pids.max",
}

// maxCgroupLimits bounds Image.CgroupLimits.
const maxCgroupLimits = 1024

// validateCgroupLimits checks the cgroups a restore may create and write
// limits into: absolute clean paths below the root, each once, known
// controllers and files, values of digits, spaces and "max".
func validateCgroupLimits(cls []CgroupLimits) error {
	if len(cls) > maxCgroupLimits {
		return fmt.Errorf("%d cgroups with limits, at most %d", len(cls), maxCgroupLimits)
	}
	seen := map[string]bool{}
	for _, c := range cls {
		if err := validPath(c.Path); err != nil || c.Path == "/" {
			return fmt.Errorf("cgroup limits: path %q: not a cgroup below the root", c.Path)
		}
		if seen[c.Path] {
			return fmt.Errorf("cgroup limits: %s listed twice", c.Path)
		}
		seen[c.Path] = true
		for _, ctl := range c.Controllers {
			if !slices.Contains(CgroupLimitControllers, ctl) {
				return fmt.Errorf("cgroup limits: %s: controller %q", c.Path, ctl)
			}
		}
		for name, v := range c.Files {
			if !slices.Contains(CgroupLimitFiles, name) {
				return fmt.Errorf("cgroup limits: %s: file %q", c.Path, name)
			}
			if v == "" || len(v) > 64 || strings.Trim(v, "0123456789 max") != "" {
				return fmt.Errorf("cgroup limits: %s: %s %q", c.Path, name, v)
			}
		}
	}
	return nil
}
