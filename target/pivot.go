package target

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// A container whose root is a directory of the host it pivoted into
// (core.MountNS.Pivoted, as runc makes one) has the paths of its files
// in its own namespace: "/usr/bin/app" is its root filesystem's, not the
// restorer's. The namespace is built in the husk as any other, but for
// its root: the host directory is bound over itself, the husk pivots
// into it (pivot_root(".", ".")) and detaches the old root, and the
// image's mounts are made on it. The files are then opened beneath the
// restored root's root directory; before it exists (the image's checks),
// beneath the host paths the container's mounts bind.

// pathRoot is where the paths of an image's files are looked up: the
// restorer's own namespace (a nil *pathRoot), or a pivoted container's.
type pathRoot struct {
	mounts []core.Mount
	// root is the restored root's root directory (O_PATH), once it
	// exists; the host paths of mounts are used until then.
	root *os.File
}

// newPathRoot returns the pathRoot of a table, nil unless it is pivoted.
func newPathRoot(ns *core.MountNS) *pathRoot {
	if ns == nil || !ns.Pivoted {
		return nil
	}
	return &pathRoot{mounts: ns.Mounts}
}

// enter makes pr look paths up beneath the root directory of process
// pid, the restored root (no-op for a nil pr).
func (pr *pathRoot) enter(pid int) error {
	if pr == nil {
		return nil
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("root directory of the container: %w", err)
	}
	if pr.root != nil {
		pr.root.Close()
	}
	pr.root = f
	return nil
}

func (pr *pathRoot) close() {
	if pr != nil && pr.root != nil {
		pr.root.Close()
		pr.root = nil
	}
}

// open opens the image's path p, as os.OpenFile does without a pathRoot:
// in a pivoted container, resolved as inside it (absolute symbolic links
// and ".." stay beneath its root), never through a magic link; before
// its root exists, beneath the host path of the bind mount p is on,
// crossing no mount of the host there.
func (pr *pathRoot) open(p string, flags int) (*os.File, error) {
	if pr == nil {
		return os.OpenFile(p, flags, 0)
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	if pr.root != nil {
		return openat2(int(pr.root.Fd()), p, &how)
	}
	m := core.CoveringMount(pr.mounts, p)
	if m == nil || m.Kind != core.MountBind {
		return nil, &os.PathError{Op: "open", Path: p, Err: fmt.Errorf("not on a host path the container binds: %w", unix.ENOENT)}
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, m.Point), "/")
	if rel == "" {
		how.Flags |= unix.O_NOFOLLOW
		how.Resolve = unix.RESOLVE_NO_MAGICLINKS
		return openat2(unix.AT_FDCWD, m.From, &how)
	}
	dir, err := os.OpenFile(m.From, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	how.Resolve |= unix.RESOLVE_NO_XDEV
	return openat2(int(dir.Fd()), rel, &how)
}

// stat is unix.Stat of the image's path p (see open).
func (pr *pathRoot) stat(p string, st *unix.Stat_t) error {
	if pr == nil {
		return unix.Stat(p, st)
	}
	f, err := pr.open(p, unix.O_PATH)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fstat(int(f.Fd()), st)
}

func openat2(dir int, p string, how *unix.OpenHow) (*os.File, error) {
	fd, err := unix.Openat2(dir, p, how)
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// pivot binds the host directory of the table's root over itself, makes
// it the husk's root and detaches the old one, with all the restorer's
// mounts; the root gets its options.
//
// Preconditions: every mount of the husk's namespace is private; the
// bind mounts' host paths are taken (takeBinds).
func (b *nsBuilder) pivot() error {
	m := &b.ns.Mounts[0]
	flags, err := mountFlags(m.Options)
	if err != nil {
		return &MountError{Point: m.Point, Reason: err.Error()}
	}
	a, err := b.put("", m.From, ".", "/")
	if err != nil {
		return err
	}
	if _, err := b.sys("move_mount", unix.SYS_MOVE_MOUNT, b.binds[m.ID], a[0], atFDCWD, a[1], unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind the root %s: %w", m.From, err)
	}
	if _, err := b.sys("chdir", unix.SYS_CHDIR, a[1]); err != nil {
		return fmt.Errorf("chdir %s: %w", m.From, err)
	}
	if _, err := b.sys("pivot_root", unix.SYS_PIVOT_ROOT, a[2], a[2]); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", m.From, err)
	}
	// The old root is stacked under the new one at "."; detached, the
	// new root is left on top.
	if _, err := b.sys("umount2", unix.SYS_UMOUNT2, a[2], unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if _, err := b.sys("chdir", unix.SYS_CHDIR, a[3]); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return b.mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
}
