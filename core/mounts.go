package core

import (
	"fmt"
	"path/filepath"
	"strings"
)

// MountNS is the mount namespace of the image's processes when it is not
// the dumping migrate's own (a container's): its mounts in mountinfo
// order, each described by how the restore brings it back.
type MountNS struct {
	Mounts []Mount `json:"mounts"`
	// Pivoted is set when the namespace's root, its first mount, is a
	// directory of the host bound at "/" (MountBind) that the processes
	// pivoted into (pivot_root, as runc does): no mount of the host's
	// namespace is left in it (no MountHost), and the paths of the
	// processes' files are the container's, opened beneath its root.
	Pivoted bool `json:"pivoted,omitempty"`
}

// Kinds of Mount.
const (
	// MountHost is a mount the dumping migrate's namespace has too (same
	// device, directory and mount point): the restore keeps the copy its
	// own namespace has.
	MountHost = "host"
	// MountTmpfs is a tmpfs of the container: mounted afresh with its
	// options and filled with Files.
	MountTmpfs = "tmpfs"
	// MountBind binds From, a path of the host, at Point.
	MountBind = "bind"
	// MountFresh is a new instance of a virtual filesystem (proc, sysfs,
	// mqueue, devpts, cgroup2), mounted with its options.
	MountFresh = "fresh"
	// MountOwnBind binds part (Root) of an earlier mount of the
	// namespace's own (Of: a tmpfs or a fresh mount) at Point: a
	// container runtime's masked and read-only paths (/dev/null over
	// /proc/kcore, /proc/sys over itself read-only).
	MountOwnBind = "own-bind"
)

// FreshFSTypes are the filesystems a MountFresh may have.
var FreshFSTypes = map[string]bool{"proc": true, "sysfs": true, "mqueue": true, "devpts": true, "cgroup2": true, "cgroup": true}

// Mount is one mount of a MountNS, as /proc/PID/mountinfo shows it.
type Mount struct {
	Kind    string `json:"kind"`
	ID      int    `json:"id"`     // the dump's mount id
	Parent  int    `json:"parent"` // its parent's, or one not in the table (the root's)
	Dev     string `json:"dev"`    // major:minor
	Root    string `json:"root"`   // the directory of the filesystem mounted
	Point   string `json:"point"`
	Options string `json:"options"` // per-mount options
	// Shared is set for a mount shared with the mounts of its peer group
	// inside the namespace (not with a mount outside it).
	Shared bool `json:"shared,omitempty"`
	// Slave is set for a host mount that receives mounts from its peer
	// group outside the namespace (the host's copy of it).
	Slave  bool   `json:"slave,omitempty"`
	FSType string `json:"fstype"`
	Source string `json:"source"`
	Super  string `json:"super"` // superblock options
	// Container is set for a MountFresh of a container's own namespace (a
	// proc of its PID namespace, an mqueue of its IPC namespace, a cgroup
	// hierarchy mounted in its cgroup namespace), and for
	// the tmpfs, fresh and own-bind mounts on or under one or binding
	// part of one. The restore mounts them from inside the container (its
	// init mounts them), after the rest of the table, in its order.
	Container bool `json:"container,omitempty"`
	// From is the host path a MountBind binds.
	From string `json:"from,omitempty"`
	// Of is the mount id of the mount a MountOwnBind binds part of.
	Of int `json:"of,omitempty"`
	// Files are a tmpfs's contents, parents before their children.
	Files []TmpfsFile `json:"files,omitempty"`
	// Top is a tmpfs's root directory (Path "."): its mode, owner and
	// times, which the mount options give only as they were at mount.
	Top *TmpfsFile `json:"top,omitempty"`
}

// TmpfsFile is a file, directory or symbolic link of a tmpfs.
type TmpfsFile struct {
	Path string `json:"path"` // relative to the mount, clean
	Mode uint32 `json:"mode"` // st_mode: type and permission bits
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	// Atime and Mtime are nanoseconds since the epoch.
	Atime int64 `json:"atime"`
	Mtime int64 `json:"mtime"`
	// Link is a symbolic link's target.
	Link string `json:"link,omitempty"`
	// HardLink names the earlier file of the mount this one is another
	// name of.
	HardLink string `json:"hard_link,omitempty"`
	// Data names the blob of a regular file's contents ("" if empty).
	Data string `json:"data,omitempty"`
	// Rdev is a character device's number (Linux's encoding, as
	// st_rdev): one of TmpfsDevices.
	Rdev uint64 `json:"rdev,omitempty"`
	// Covered is the mount point of another mount: what it covers cannot
	// be seen, so it is made empty, owned by root, mode 0755 (0644 for a
	// file), times left as made.
	Covered bool `json:"covered,omitempty"`
}

// TmpfsDevices are the character devices a tmpfs of an image may hold,
// by their st_rdev: those a container runtime makes in a container's
// /dev (null, zero, full, random, urandom, tty). The restore makes them
// with mknod, so no other device (a disk, /dev/mem) may come from an
// image.
var TmpfsDevices = map[uint64]string{
	1<<8 | 3: "null", 1<<8 | 5: "zero", 1<<8 | 7: "full", 1<<8 | 8: "random", 1<<8 | 9: "urandom", 5<<8 | 0: "tty",
}

// MaxTmpfsBytes bounds the contents of all tmpfs mounts of an image: they
// are read while the processes are frozen.
const MaxTmpfsBytes = 256 << 20

// S_IFMT and the file types a tmpfs file may have.
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// validateMounts checks a mount table: kinds, clean absolute points,
// clean relative file paths, known blobs, each parent directory listed
// before its files.
func validateMounts(ns *MountNS, blobs map[string]Blob) error {
	if ns == nil {
		return nil
	}
	if len(ns.Mounts) == 0 || len(ns.Mounts) > 1<<16 {
		return fmt.Errorf("mount table of %d mounts", len(ns.Mounts))
	}
	if r := ns.Mounts[0]; ns.Pivoted && (r.Point != "/" || r.Kind != MountBind) {
		return fmt.Errorf("a root filesystem pivoted into whose first mount is a %s at %q, not a host directory bound at /", r.Kind, r.Point)
	}
	ids := map[int]bool{}
	byID := map[int]*Mount{}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if ns.Pivoted && m.Kind == MountHost {
			return fmt.Errorf("mount %d at %q: a mount of the host in a root filesystem pivoted into", m.ID, m.Point)
		}
		bad := func(f string, a ...any) error {
			return fmt.Errorf("mount %d at %q: %s", m.ID, m.Point, fmt.Sprintf(f, a...))
		}
		if ids[m.ID] {
			return bad("mount id listed twice")
		}
		ids[m.ID] = true
		if err := validPath(m.Point); err != nil {
			return bad("%v", err)
		}
		for _, s := range []string{m.Dev, m.Root, m.Options, m.FSType, m.Source, m.Super} {
			if len(s) > 4096 || strings.IndexByte(s, 0) >= 0 {
				return bad("field too long or with a NUL byte")
			}
		}
		if m.Slave && (m.Shared || m.Kind != MountHost) {
			return bad("a slave that is shared too or not a host mount")
		}
		switch m.Kind {
		case MountHost:
		case MountBind:
			if err := validPath(m.From); err != nil {
				return bad("bind source: %v", err)
			}
		case MountFresh:
			// A cgroup hierarchy mounted inside a container's cgroup
			// namespace shows the namespace's root.
			if !FreshFSTypes[m.FSType] || (m.Root != "/" && !(m.Container && (m.FSType == "cgroup" || m.FSType == "cgroup2"))) || validPath(m.Root) != nil {
				return bad("not a fresh mount of a virtual filesystem: %s of %q", m.FSType, m.Root)
			}
		case MountTmpfs:
			if m.FSType != "tmpfs" || m.Root != "/" {
				return bad("not a whole tmpfs: %s of %q", m.FSType, m.Root)
			}
		case MountOwnBind:
			of := byID[m.Of]
			if of == nil || (of.Kind != MountTmpfs && of.Kind != MountFresh) || of.FSType != m.FSType || of.Dev != m.Dev || validPath(m.Root) != nil {
				return bad("a bind of mount %d, not an earlier tmpfs or fresh mount of its filesystem, or of part %q", m.Of, m.Root)
			}
			if of.Container && !m.Container {
				return bad("a bind of a mount made inside the container, made outside")
			}
		default:
			return bad("kind %q", m.Kind)
		}
		if m.Kind != MountOwnBind && m.Of != 0 {
			return bad("a %s binding mount %d", m.Kind, m.Of)
		}
		if p := byID[m.Parent]; p != nil && p.Container && !m.Container {
			return bad("on a mount made inside the container, made outside before it")
		}
		byID[m.ID] = m
		if m.Container && (m.Kind == MountHost || m.Kind == MountBind || m.Shared) {
			return bad("a mount made inside the container that is a host mount or a bind of a host path, or shared")
		}
		if m.Top != nil && (m.Kind != MountTmpfs || m.Top.Path != "." || m.Top.Mode&sIFMT != sIFDIR || m.Top.Mode&^(sIFMT|0o7777) != 0 ||
			m.Top.Link != "" || m.Top.Data != "" || m.Top.HardLink != "" || m.Top.Covered) {
			return bad("root directory %+v", *m.Top)
		}
		if m.Kind != MountTmpfs && len(m.Files) > 0 {
			return bad("files in a %s mount", m.Kind)
		}
		if len(m.Files) > maxList {
			return bad("%d files", len(m.Files))
		}
		seen := map[string]uint32{".": sIFDIR}
		for _, f := range m.Files {
			if f.Path == "" || filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path || f.Path == "." ||
				strings.HasPrefix(f.Path, "../") || f.Path == ".." || len(f.Path) >= 4096 || strings.IndexByte(f.Path, 0) >= 0 {
				return bad("file path %q", f.Path)
			}
			if _, dup := seen[f.Path]; dup {
				return bad("file %q listed twice", f.Path)
			}
			if seen[filepath.Dir(f.Path)] != sIFDIR {
				return bad("file %q before its directory", f.Path)
			}
			if f.Mode&^(sIFMT|0o7777) != 0 {
				return bad("file %q: mode %#o", f.Path, f.Mode)
			}
			if f.Rdev != 0 && f.Mode&sIFMT != sIFCHR {
				return bad("file %q: a device number for a %#o", f.Path, f.Mode&sIFMT)
			}
			switch f.Mode & sIFMT {
			case sIFCHR:
				if _, ok := TmpfsDevices[f.Rdev]; !ok || f.Link != "" || f.Data != "" || f.HardLink != "" || f.Covered {
					return bad("character device %q: %d:%d is not one a container's /dev has", f.Path, f.Rdev>>8, f.Rdev&0xff)
				}
			case sIFDIR:
				if f.Link != "" || f.Data != "" || f.HardLink != "" {
					return bad("directory %q with contents", f.Path)
				}
			case sIFLNK:
				if f.Link == "" || len(f.Link) >= 4096 || strings.IndexByte(f.Link, 0) >= 0 || f.Data != "" || f.HardLink != "" {
					return bad("symbolic link %q: target %q", f.Path, f.Link)
				}
			case sIFREG:
				if f.Link != "" {
					return bad("file %q with a link target", f.Path)
				}
				if f.HardLink != "" {
					if seen[f.HardLink] != sIFREG || f.Data != "" {
						return bad("file %q: hard link to %q, not an earlier file", f.Path, f.HardLink)
					}
				} else if f.Data != "" {
					if _, ok := blobs[f.Data]; !ok {
						return bad("file %q: contents %q not in the image", f.Path, f.Data)
					}
				}
			default:
				return bad("file %q of type %#o", f.Path, f.Mode&sIFMT)
			}
			seen[f.Path] = f.Mode & sIFMT
		}
	}
	return nil
}

// validateContainerMounts checks that a mount of a container's own
// namespaces (Mount.Container) is in the image of a container that has
// that namespace: a proc, a new PID namespace; an mqueue, a new IPC one.
func validateContainerMounts(img *Image) error {
	if img.Mounts == nil {
		return nil
	}
	ns := img.Namespaces
	for _, m := range img.Mounts.Mounts {
		if !m.Container {
			continue
		}
		if ns == nil || ns.PID == nil || (m.Kind == MountFresh && m.FSType == "mqueue" && ns.IPC == nil) {
			return fmt.Errorf("mount %d at %q: a %s of the container's namespaces in an image without them", m.ID, m.Point, m.FSType)
		}
	}
	return nil
}

// SameTable tells whether two tables have the same mounts, tmpfs files
// and root directories aside (a live migration's first layout has none, its final image has
// them).
func (ns *MountNS) SameTable(other *MountNS) bool {
	if ns == nil || other == nil {
		return ns == other
	}
	if len(ns.Mounts) != len(other.Mounts) || ns.Pivoted != other.Pivoted {
		return false
	}
	for i := range ns.Mounts {
		a, b := ns.Mounts[i], other.Mounts[i]
		a.Files, b.Files, a.Top, b.Top = nil, nil, nil, nil
		if fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", b) {
			return false
		}
	}
	return true
}

// CoveringMount returns the mount of a table a path is on: the last
// mounted at the longest mount point that is a prefix of it (nil if
// none).
func CoveringMount(mounts []Mount, p string) *Mount {
	var best *Mount
	for i := range mounts {
		m := &mounts[i]
		if m.Point == p || m.Point == "/" || strings.HasPrefix(p, m.Point+"/") {
			if best == nil || len(m.Point) >= len(best.Point) {
				best = m
			}
		}
	}
	return best
}

// BlobNames returns the blobs of the tmpfs files of the table.
func (ns *MountNS) BlobNames() []string {
	if ns == nil {
		return nil
	}
	var out []string
	for _, m := range ns.Mounts {
		for _, f := range m.Files {
			if f.Data != "" {
				out = append(out, f.Data)
			}
		}
	}
	return out
}
