package proc

import (
	"fmt"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/PID/mountinfo.
type MountInfo struct {
	ID, Parent int
	Dev        string // "major:minor"
	Root       string // the directory of the filesystem mounted here
	Point      string // where, relative to the reader's root
	Options    string // per-mount options ("rw,nosuid,relatime")
	// Optional are the optional fields: "shared:N", "master:N",
	// "propagate_from:N", "unbindable".
	Optional []string
	FSType   string
	Source   string
	Super    string // superblock options
}

// Shared returns the peer group of a shared mount, or 0.
func (m *MountInfo) Shared() int { return m.tag("shared:") }

// Master returns the peer group a slave mount receives from, or 0.
func (m *MountInfo) Master() int { return m.tag("master:") }

func (m *MountInfo) tag(prefix string) int {
	for _, o := range m.Optional {
		if v, ok := strings.CutPrefix(o, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// ReadMountInfo reads and parses /proc/PID/mountinfo.
func ReadMountInfo(pid int) ([]MountInfo, error) {
	b, err := readFile(fmt.Sprintf("%s/%d/mountinfo", Root, pid), 16384)
	if err != nil {
		return nil, err
	}
	return ParseMountInfo(b)
}

// ParseMountInfo parses a mountinfo file, in its order.
func ParseMountInfo(b []byte) ([]MountInfo, error) {
	var out []MountInfo
	for n := 1; len(b) > 0; n++ {
		var line []byte
		line, b = cutLine(b)
		if len(line) == 0 {
			continue
		}
		bad := func(field, v string, err error) error { return parseErr("mountinfo", n, field, []byte(v), err) }
		pre, post, ok := strings.Cut(string(line), " - ")
		if !ok {
			return nil, bad("separator", string(line), errSyntax)
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 6 || len(g) < 3 {
			return nil, bad("fields", string(line), errTooShort)
		}
		var m MountInfo
		var err error
		if m.ID, err = strconv.Atoi(f[0]); err != nil {
			return nil, bad("mount id", f[0], err)
		}
		if m.Parent, err = strconv.Atoi(f[1]); err != nil {
			return nil, bad("parent id", f[1], err)
		}
		m.Dev, m.Root, m.Point, m.Options = f[2], unescapeMount(f[3]), unescapeMount(f[4]), f[5]
		m.Optional = f[6:]
		m.FSType, m.Source, m.Super = g[0], unescapeMount(g[1]), strings.Join(g[2:], " ")
		out = append(out, m)
	}
	return out, nil
}
