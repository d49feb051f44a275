package proc

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Cgroup is a line of /proc/PID/cgroup: hierarchy ID, its controllers
// ("" for the unified hierarchy, "cpu,cpuacct", "name=systemd") and the
// path from the root of the reader's cgroup namespace.
type Cgroup struct {
	ID          int
	Controllers string
	Path        string
}

// ReadCgroups reads the cgroups of thread tid of process pid (tid = pid
// for the process's, which are its leader's).
func ReadCgroups(pid, tid int) ([]Cgroup, error) {
	b, err := readFile(taskPath(pid, tid, "cgroup"), 512)
	if err != nil {
		return nil, err
	}
	return ParseCgroups(b)
}

// ParseCgroups parses the contents of /proc/PID/cgroup.
func ParseCgroups(b []byte) ([]Cgroup, error) {
	var out []Cgroup
	for no := 1; len(b) > 0; no++ {
		var line []byte
		line, b = cutLine(b)
		if len(line) == 0 {
			continue
		}
		id, rest, ok := bytes.Cut(line, []byte(":"))
		ctl, path, ok2 := bytes.Cut(rest, []byte(":"))
		if !ok || !ok2 {
			return nil, cgroupErr(no, "line", line, errors.New("not ID:CONTROLLERS:PATH"))
		}
		n, err := parseDec(id)
		if err == nil && n > 1<<16 {
			err = errors.New("out of range")
		}
		if err != nil {
			return nil, cgroupErr(no, "hierarchy-ID", id, err)
		}
		out = append(out, Cgroup{ID: int(n), Controllers: string(ctl), Path: string(path)})
	}
	return out, nil
}

// CgroupMount is a mount of a cgroup hierarchy.
type CgroupMount struct {
	// Controllers names the hierarchy as /proc/PID/cgroup does: "" for
	// cgroup2, else its controllers and name= in the kernel's order.
	Controllers string
	Root        string // the hierarchy's directory mounted here
	Dir         string // where it is mounted
}

// ReadCgroupMounts lists the cgroup and cgroup2 mounts of the reader's
// mount namespace, from /proc/self/mountinfo; subsystems are the
// controller names the kernel knows (the first column of /proc/cgroups),
// which tell a v1 mount's controllers from its other options.
func ReadCgroupMounts() ([]CgroupMount, error) {
	mi, err := readFile(Root+"/self/mountinfo", 8192)
	if err != nil {
		return nil, err
	}
	subsys := map[string]bool{}
	if b, err := readFile(Root+"/cgroups", 1024); err == nil {
		for len(b) > 0 {
			var line []byte
			line, b = cutLine(b)
			if f, _ := nextField(line); len(f) > 0 && f[0] != '#' {
				subsys[string(f)] = true
			}
		}
	}
	return ParseCgroupMounts(mi, subsys)
}

// ParseCgroupMounts picks the cgroup mounts out of a mountinfo file.
func ParseCgroupMounts(mi []byte, subsys map[string]bool) ([]CgroupMount, error) {
	var out []CgroupMount
	for len(mi) > 0 {
		var line []byte
		line, mi = cutLine(mi)
		pre, post, ok := strings.Cut(string(line), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		m := CgroupMount{Root: unescapeMount(f[3]), Dir: unescapeMount(f[4])}
		if g[0] == "cgroup" {
			var ctl []string
			for _, o := range strings.Split(g[2], ",") {
				if subsys[o] || strings.HasPrefix(o, "name=") {
					ctl = append(ctl, o)
				}
			}
			if len(ctl) == 0 {
				continue
			}
			m.Controllers = strings.Join(ctl, ",")
		}
		out = append(out, m)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := parseOct([]byte(s[i+1 : i+4])); err == nil && v < 256 {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func cgroupErr(line int, field string, v []byte, err error) error {
	if len(v) > 64 {
		v = v[:64]
	}
	return &ParseError{File: "cgroup", Line: line, Field: field, Value: string(v), Err: err}
}

// OutsideCgroupNSError says a process's cgroup is not below the root of
// its own cgroup namespace in a hierarchy (it was moved out from above):
// the root cannot be told from what it sees.
type OutsideCgroupNSError struct {
	Controllers string
	Path        string // as the process sees it ("/../...")
}

func (e *OutsideCgroupNSError) Error() string {
	h := "cgroup v2"
	if e.Controllers != "" {
		h = "cgroup v1 " + e.Controllers
	}
	return fmt.Sprintf("%s: its cgroup is %s in its cgroup namespace, outside the namespace's root", h, e.Path)
}

// CgroupNSRoots returns the roots of the cgroup namespace of process pid
// in each hierarchy, as paths of the caller's namespace: where the
// cgroup the process is in (as the caller sees it) ends with the path it
// sees from inside its namespace, the root is what is left.
func CgroupNSRoots(pid int) ([]Cgroup, error) {
	outer, err := ReadCgroups(pid, pid)
	if err != nil {
		return nil, err
	}
	var inner []Cgroup
	err = InNamespace(pid, unix.CLONE_NEWCGROUP, func() error {
		var err error
		inner, err = ReadCgroups(pid, pid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return cgroupNSRoots(outer, inner)
}

// cgroupNSRoots is CgroupNSRoots from the two views of /proc/PID/cgroup.
func cgroupNSRoots(outer, inner []Cgroup) ([]Cgroup, error) {
	if len(outer) != len(inner) {
		return nil, fmt.Errorf("cgroups: %d hierarchies from outside, %d from inside", len(outer), len(inner))
	}
	roots := make([]Cgroup, 0, len(outer))
	for i, o := range outer {
		in := inner[i]
		if in.ID != o.ID || in.Controllers != o.Controllers {
			return nil, fmt.Errorf("cgroups: hierarchy %d:%s from outside, %d:%s from inside", o.ID, o.Controllers, in.ID, in.Controllers)
		}
		if in.Path == "/.." || strings.HasPrefix(in.Path, "/../") {
			return nil, &OutsideCgroupNSError{Controllers: o.Controllers, Path: in.Path}
		}
		root := o.Path
		if in.Path != "/" {
			var ok bool
			if root, ok = strings.CutSuffix(o.Path, in.Path); !ok || !strings.HasPrefix(in.Path, "/") {
				return nil, fmt.Errorf("cgroups: hierarchy %q: %s from outside does not end with %s, from inside", o.Controllers, o.Path, in.Path)
			}
			if root == "" {
				root = "/"
			}
		}
		roots = append(roots, Cgroup{ID: o.ID, Controllers: o.Controllers, Path: root})
	}
	return roots, nil
}
