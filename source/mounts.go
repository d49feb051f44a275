package source

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// UnsupportedMountError names a mount of a process's mount namespace
// that migrate cannot bring back.
type UnsupportedMountError struct {
	PID    int
	Point  string
	FSType string
	// File is the file of the mount that cannot be recreated (a special
	// file of a tmpfs), relative to it, if that is the reason.
	File   string
	Reason string
}

func (e *UnsupportedMountError) Error() string {
	return fmt.Sprintf("process %d: mount %s (%s) is not supported: %s", e.PID, e.Point, e.FSType, e.Reason)
}

// mountNS returns the mount namespace of process pid ("mnt:[N]").
func mountNS(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
}

// ownMountNS tells whether process pid lives in a mount namespace other
// than migrate's.
func ownMountNS(pid int) (bool, error) {
	mine, err := mountNS(os.Getpid())
	if err != nil {
		return false, err
	}
	its, err := mountNS(pid)
	if err != nil {
		return false, fmt.Errorf("process %d: mount namespace: %w", pid, err)
	}
	return its != mine, nil
}

// checkMounts refuses, before anything is frozen, a process whose mount
// namespace (if not migrate's) has a mount the restore cannot rebuild.
func checkMounts(pid int) error {
	own, err := ownMountNS(pid)
	if err != nil || !own {
		return err
	}
	_, err = describeMounts(pid)
	return err
}

// describeMounts describes the mount table of process pid against
// migrate's own (see core.MountNS), refusing what the restore cannot
// rebuild. The tmpfs contents are not read.
func describeMounts(pid int) (*core.MountNS, error) {
	theirs, err := proc.ReadMountInfo(pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	mine, err := proc.ReadMountInfo(os.Getpid())
	if err != nil {
		return nil, err
	}
	refuse := func(m *proc.MountInfo, reason string) error {
		return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, Reason: reason}
	}
	hostGroups := map[int]bool{}
	for _, h := range mine {
		if g := h.Shared(); g != 0 {
			hostGroups[g] = true
		}
	}
	groups := map[int]int{} // peer group -> mounts of the namespace in it
	devs := map[string]int{}
	for _, m := range theirs {
		groups[m.Shared()]++
		devs[m.Dev]++
	}
	ns := &core.MountNS{}
	seen := map[string]bool{} // devices of the mounts described
	for i := range theirs {
		m := &theirs[i]
		cm := core.Mount{ID: m.ID, Parent: m.Parent, Dev: m.Dev, Root: m.Root, Point: m.Point, Options: m.Options,
			FSType: m.FSType, Source: m.Source, Super: m.Super}
		if err := core.ValidPath(m.Point); err != nil {
			return nil, refuse(m, "its mount point is not a clean path")
		}
		if reason := propagation(&cm, m, hostGroups, groups); reason != "" {
			return nil, refuse(m, reason)
		}
		if of := ownSource(ns.Mounts, m); of != nil {
			cm.Kind, cm.Of = core.MountOwnBind, of.ID
		} else if reason := classify(&cm, m, mine, devs, seen[m.Dev]); reason != "" {
			return nil, refuse(m, reason)
		}
		seen[m.Dev] = true
		ns.Mounts = append(ns.Mounts, cm)
	}
	if err := containerMounts(pid, ns); err != nil {
		return nil, err
	}
	if err := notePivot(pid, ns); err != nil {
		return nil, err
	}
	if err := checkRoot(pid, ns); err != nil {
		return nil, err
	}
	return ns, nil
}

// containerMounts marks, when process pid is in a container (a PID
// namespace other than migrate's), the fresh proc mounts of the
// container's PID namespace and the mqueue mounts of its IPC namespace
// (core.Mount.Container): the restore mounts them from inside the new
// ones. A proc of migrate's PID namespace, an mqueue of its IPC namespace,
// is left to the restorer (a fresh one of the restoring host's, as
// outside a container); one of any other namespace is refused, and so is
// a mount on or under a mount of the container's (those are mounted
// last).
func containerMounts(pid int, ns *core.MountNS) error {
	kinds := map[string][2]string{} // kind -> migrate's namespace, pid's
	for _, kind := range []string{"pid", "ipc", "cgroup"} {
		mine, err := nsLink("self", kind)
		if err != nil {
			return err
		}
		its, err := nsLink(strconv.Itoa(pid), kind)
		if err != nil {
			return fmt.Errorf("process %d: namespace %s: %w", pid, kind, err)
		}
		kinds[kind] = [2]string{mine, its}
	}
	if kinds["pid"][0] == kinds["pid"][1] {
		return nil
	}
	var mqDevs [2]string // of migrate's IPC namespace, of pid's
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if (m.FSType == "cgroup" || m.FSType == "cgroup2") && m.Kind == core.MountBind && kinds["cgroup"][0] != kinds["cgroup"][1] && !m.Shared {
			// A hierarchy the container mounted in its cgroup namespace
			// (its root, as migrate sees it, the namespace's): mounted
			// again in the new one (Check compares the root).
			m.Kind, m.From, m.Container = core.MountFresh, "", true
			continue
		}
		if m.Kind != core.MountFresh {
			continue
		}
		refuse := func(reason string) error {
			return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, Reason: reason}
		}
		switch m.FSType {
		case "proc":
			pidNS, err := proc.MountPIDNS(pid, m.Point, uint64(m.ID))
			if errors.Is(err, proc.ErrOtherMount) {
				return refuse("another mount covers it: the PID namespace it shows cannot be told")
			}
			if err != nil {
				return refuse(fmt.Sprintf("the PID namespace it shows cannot be read: %v", err))
			}
			switch pidNS {
			case kinds["pid"][1]:
				m.Container = true
			case kinds["pid"][0]:
			default:
				return refuse(fmt.Sprintf("a proc of PID namespace %s, neither the container's (%s) nor migrate's: not carried", pidNS, kinds["pid"][1]))
			}
		case "mqueue":
			if mqDevs[0] == "" {
				var err error
				if mqDevs[0], err = proc.MqueueDev(os.Getpid()); err != nil {
					return err
				}
				if mqDevs[1], err = proc.MqueueDev(pid); err != nil {
					return fmt.Errorf("process %d: %w", pid, err)
				}
			}
			switch {
			case m.Dev == mqDevs[1] && kinds["ipc"][0] != kinds["ipc"][1]:
				m.Container = true
			case m.Dev == mqDevs[0]:
			default:
				return refuse("an mqueue of an IPC namespace neither the container's nor migrate's: not carried")
			}
		}
	}
	// What is on a mount made from inside, or binds part of one, is made
	// from inside too, after it: a tmpfs, a fresh or an own bind mount.
	inside := map[int]*core.Mount{}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if m.Container {
			inside[m.ID] = m
			continue
		}
		on := inside[m.Parent]
		if on == nil && m.Kind == core.MountOwnBind {
			on = inside[m.Of]
		}
		if on == nil {
			continue
		}
		if m.Kind == core.MountHost || m.Kind == core.MountBind || m.Shared {
			return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, Reason: fmt.Sprintf(
				"it is mounted on or binds %s, a %s of the container's own namespace, which the restore mounts from inside the container: only a tmpfs, a fresh virtual filesystem or a bind of the container's own can be mounted there, not shared", on.Point, on.FSType)}
		}
		m.Container = true
		inside[m.ID] = m
	}
	return nil
}

// propagation sets the propagation of cm (mount m of the namespace), or
// says why it cannot be kept: private, shared in a peer group of its own,
// or the slave of a peer group of migrate's namespace (hostGroups).
// groups counts the namespace's mounts in each peer group.
func propagation(cm *core.Mount, m *proc.MountInfo, hostGroups map[int]bool, groups map[int]int) string {
	if slices.Contains(m.Optional, "unbindable") {
		return "it is unbindable: only private, shared and slave mounts are kept"
	}
	if g := m.Master(); g != 0 {
		// Kept as the slave of the restoring host's copy of the host
		// mount (classify checks it is one).
		if !hostGroups[g] || m.Shared() != 0 {
			return fmt.Sprintf("it is a slave of peer group %d, not of a mount of migrate's namespace, or shared too: only private and shared mounts, and slaves of the host's, are kept", g)
		}
		cm.Slave = true
	}
	if g := m.Shared(); g != 0 {
		if hostGroups[g] {
			return fmt.Sprintf("it is shared with mounts of migrate's namespace (peer group %d): a restored namespace cannot join a peer group", g)
		}
		if groups[g] > 1 {
			return fmt.Sprintf("it shares peer group %d with other mounts of the namespace: peer groups are not rebuilt", g)
		}
		cm.Shared = true
	}
	return ""
}

// ownSource returns the mount of the namespace described so far (mounts)
// that mount m binds part of, if m is such a bind of a tmpfs or a fresh
// virtual filesystem of the namespace's own (core.MountOwnBind): of the
// same filesystem instance, the part it shows within the other's.
func ownSource(mounts []core.Mount, m *proc.MountInfo) *core.Mount {
	for i := range mounts {
		o := &mounts[i]
		if o.Dev == m.Dev && o.FSType == m.FSType && (o.Kind == core.MountTmpfs || o.Kind == core.MountFresh) {
			return o
		}
	}
	return nil
}

// classify sets the kind of cm (mount m of the namespace) from migrate's
// own mounts (mine), or says why it cannot be rebuilt. devs counts the
// namespace's mounts of each device.
func classify(cm *core.Mount, m *proc.MountInfo, mine []proc.MountInfo, devs map[string]int, again bool) string {
	var host bool
	var under []*proc.MountInfo // mounts of migrate's of the directory m mounts, or above it
	for j := range mine {
		h := &mine[j]
		if h.Dev != m.Dev {
			continue
		}
		if h.Root == m.Root && h.Point == m.Point && h.FSType == m.FSType {
			host = true
		}
		if h.Root == "/" || h.Root == m.Root || strings.HasPrefix(m.Root, strings.TrimSuffix(h.Root, "/")+"/") {
			under = append(under, h)
		}
	}
	switch {
	case cm.Slave && !host:
		return "a slave mount that is not a copy of one of migrate's namespace: not kept"
	case host:
		cm.Kind = core.MountHost
	case len(under) > 0:
		// The host path of the directory, on a mount of migrate's that
		// shows it (not hidden by another).
		var err error
		for _, h := range under {
			rel := strings.TrimPrefix(strings.TrimPrefix(m.Root, strings.TrimSuffix(h.Root, "/")), "/")
			from := path.Join(h.Point, rel)
			if err = checkBindSource(from, h.ID); err == nil {
				cm.Kind, cm.From = core.MountBind, from
				return ""
			}
		}
		return err.Error()
	case devs[m.Dev] > 1 && again:
		return "its filesystem is mounted more than once in the namespace, not as a bind of part of a tmpfs or virtual filesystem of the container's own mounted before it: not supported"
	case m.FSType == "tmpfs":
		if m.Root != "/" {
			return "part of a tmpfs migrate's namespace does not have"
		}
		cm.Kind = core.MountTmpfs
	case core.FreshFSTypes[m.FSType]:
		if m.Root != "/" {
			return "part of a " + m.FSType + " instance migrate's namespace does not have"
		}
		cm.Kind = core.MountFresh
	default:
		return "a filesystem migrate's mount namespace does not have (overlay, fuse, nfs, a block device not mounted here...): only tmpfs, bind mounts of host paths, and proc, sysfs, mqueue, devpts and cgroup2 are rebuilt"
	}
	return ""
}

// checkBindSource checks that the host path a bind mount binds is
// there, on the host mount it was found under (not hidden by another).
func checkBindSource(p string, mountID int) error {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return fmt.Errorf("its host path %s cannot be found in migrate's namespace: %w", p, err)
	}
	if st.Mnt_id != uint64(mountID) {
		return fmt.Errorf("its host path %s is hidden by another mount in migrate's namespace", p)
	}
	return nil
}

// notePivot marks a table whose root is a directory of the host bound
// there (core.MountNS.Pivoted: pivot_root into a container's root
// filesystem, as runc does) and describes its host mounts as the
// restore rebuilds them, none of the restorer's own namespace being
// left under the new root: a virtual filesystem mounted fresh, any
// other bound from the host's mount at the same place. A slave of the
// host's is refused there.
func notePivot(pid int, ns *core.MountNS) error {
	if r := coveringMount(ns.Mounts, "/"); r == nil || r.Point != "/" || r.Kind != core.MountBind || slices.ContainsFunc(ns.Mounts, func(m core.Mount) bool { return m.ID == r.Parent }) {
		return nil
	}
	ns.Pivoted = true
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if m.Kind != core.MountHost {
			continue
		}
		if m.Slave {
			return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, Reason: "a slave of the host's mount under a root filesystem pivoted into: not kept"}
		}
		if core.FreshFSTypes[m.FSType] && m.Root == "/" {
			m.Kind = core.MountFresh
		} else {
			m.Kind, m.From = core.MountBind, m.Point
		}
	}
	return nil
}

// checkRoot refuses a process whose root directory is not the root of its
// mount namespace (chroot), and one whose namespace's root is neither a
// mount of the host nor a host directory pivoted into.
func checkRoot(pid int, ns *core.MountNS) error {
	var its, root unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/root", pid), &its); err != nil {
		return fmt.Errorf("process %d: root directory: %w", pid, err)
	}
	rootDir := "/"
	if ns.Pivoted {
		rootDir = coveringMount(ns.Mounts, "/").From
	}
	if err := unix.Stat(rootDir, &root); err != nil {
		return fmt.Errorf("the root of the mount namespace of process %d, %s here: %w", pid, rootDir, err)
	}
	if its.Dev != root.Dev || its.Ino != root.Ino {
		return &UnsupportedMountError{PID: pid, Point: "/", FSType: "root directory",
			Reason: "the process's root directory is not its mount namespace's (chroot): not supported yet"}
	}
	if c := coveringMount(ns.Mounts, "/"); !ns.Pivoted && (c == nil || c.Kind != core.MountHost) {
		return &UnsupportedMountError{PID: pid, Point: "/", FSType: "root directory", Reason: "the namespace's root is neither a mount of migrate's nor a directory of the host bound there (pivot_root into an overlay or a tmpfs?): not supported"}
	}
	return nil
}

// coveringMount returns the mount of the table a path is on
// (core.CoveringMount).
func coveringMount(mounts []core.Mount, p string) *core.Mount { return core.CoveringMount(mounts, p) }

// readMounts describes the mount namespace of the frozen processes when
// it is not migrate's (ss.mounts), tmpfs contents stored as blobs. Every
// process must share the root's namespace, and every path the restorer
// opens for them (executable, mapped and open files, working directory)
// must be on a mount of the host: the restorer opens it in its own
// namespace.
//
// Preconditions: every process of all is frozen, its fds and layout read.
func (ss *session) readMounts(all []*dumper) error {
	ss.mounts = nil
	root := all[0]
	pids := make([]int, len(all))
	for i, d := range all {
		pids[i] = d.pid
	}
	if err := sameMountNS(pids); err != nil {
		return err
	}
	own, err := ownMountNS(root.pid)
	if err != nil || !own {
		return err
	}
	ns, err := describeMounts(root.pid)
	if err != nil {
		return err
	}
	for _, d := range all {
		if err := checkPathsOnHost(d, ns.Mounts, ns.Pivoted); err != nil {
			return err
		}
	}
	var total int64
	for i := range ns.Mounts {
		if ns.Mounts[i].Kind == core.MountTmpfs {
			if err := ss.readTmpfs(root.pid, &ns.Mounts[i], &total); err != nil {
				return err
			}
		}
	}
	ss.mounts = ns
	return nil
}

// checkPathsOnHost refuses a process with a file the restorer would open
// by path on a mount of the container's own (a tmpfs, a bind, proc...);
// in a root filesystem pivoted into (pivoted), the files on it and on
// the host paths bound in it are opened there, and each path must lead,
// inside the container, to the very file the process has (not one of a
// mount outside it, such as a file opened before the pivot).
func checkPathsOnHost(d *dumper, mounts []core.Mount, pivoted bool) error {
	var root *os.File
	if pivoted {
		var err error
		if root, err = os.OpenFile(fmt.Sprintf("/proc/%d/root", d.pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("process %d: root directory: %w", d.pid, err)
		}
		defer root.Close()
	}
	check := func(what, p string, ref *core.FileRef) error {
		if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "/memfd:") || (ref != nil && ref.Deleted) {
			return nil
		}
		m := coveringMount(mounts, p)
		if m == nil {
			return nil
		}
		switch {
		case pivoted && (m == nil || m.Kind != core.MountBind):
			return &UnsupportedMountError{PID: d.pid, Point: m.Point, FSType: m.FSType,
				Reason: fmt.Sprintf("%s %s is on it: the restore opens files in the container's root filesystem and the host paths bound in it only", what, p)}
		case pivoted && ref != nil:
			if reason := sameInside(root, p, ref); reason != "" {
				return &UnsupportedMountError{PID: d.pid, Point: m.Point, FSType: m.FSType, Reason: fmt.Sprintf("%s %s: %s", what, p, reason)}
			}
		case !pivoted && m.Kind != core.MountHost:
			return &UnsupportedMountError{PID: d.pid, Point: m.Point, FSType: m.FSType,
				Reason: fmt.Sprintf("%s %s is on it: the restore opens files in migrate's own namespace, only files on mounts of the host can be", what, p)}
		}
		return nil
	}
	p := d.proc
	if err := check("the executable", p.Exe.Path, &p.Exe); err != nil {
		return err
	}
	if err := check("the working directory", p.Cwd, nil); err != nil {
		return err
	}
	for _, f := range p.FDs {
		if f.File != nil {
			if err := check(fmt.Sprintf("the file of fd %d", f.FD), f.File.Path, f.File); err != nil {
				return err
			}
		}
	}
	for _, v := range p.VMAs {
		if v.File != nil {
			if err := check("the mapped file", v.File.Path, v.File); err != nil {
				return err
			}
		}
	}
	return nil
}

// sameInside says how path p, looked up inside a container whose root
// directory is open at root, is not the file ref ("" if it is).
func sameInside(root *os.File, p string, ref *core.FileRef) string {
	fd, err := unix.Openat2(int(root.Fd()), p, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return fmt.Sprintf("not found inside the container (%v): the file is on a mount outside its namespace (opened before pivot_root?)", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err.Error()
	}
	if st.Dev != ref.Dev || st.Ino != ref.Ino {
		return "another file inside the container: the process's is on a mount outside its namespace (opened before pivot_root?)"
	}
	return ""
}

// readTmpfs lists the files of a tmpfs of the namespace (through process
// pid's root) and stores their contents as blobs; total counts the bytes
// of all of them, bounded by core.MaxTmpfsBytes. A mount point of another
// mount on it is described as covered (what it covers cannot be seen).
func (ss *session) readTmpfs(pid int, m *core.Mount, total *int64) error {
	refuse := func(reason string) error {
		return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, Reason: reason}
	}
	links := map[uint64]string{}
	err := proc.WalkMount(pid, m.Point, uint64(m.ID), func(e *proc.MountEntry) error {
		st := &e.Stat
		tf := core.TmpfsFile{Path: e.Path, Mode: uint32(st.Mode), UID: st.Uid, GID: st.Gid,
			Atime: st.Atime.Sec*1e9 + int64(st.Atime.Nsec), Mtime: st.Mtime.Sec*1e9 + int64(st.Mtime.Nsec)}
		if !e.Covered {
			if x, err := xattrsOf(e); err != nil || x != "" {
				return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, File: e.Path,
					Reason: fmt.Sprintf("%s has extended attributes or an ACL (%s%v): they are not carried", e.Path, x, err)}
			}
		}
		if e.Path == "." {
			m.Top = &tf
			return nil
		}
		switch mode := uint32(st.Mode) & unix.S_IFMT; {
		case e.Covered:
			tf = core.TmpfsFile{Path: e.Path, Mode: unix.S_IFDIR | 0o755, Covered: true}
			if mode != unix.S_IFDIR {
				tf.Mode = unix.S_IFREG | 0o644
			}
		case mode == unix.S_IFDIR:
		case mode == unix.S_IFLNK:
			var err error
			if tf.Link, err = proc.Readlinkat(e.Dir, e.Name); err != nil || tf.Link == "" {
				return refuse(fmt.Sprintf("symbolic link %s: %v", e.Path, err))
			}
		case mode == unix.S_IFREG:
			if first, ok := links[st.Ino]; ok && st.Nlink > 1 {
				tf.HardLink = first
				break
			}
			links[st.Ino] = e.Path
			*total += int64(st.Size)
			if *total > core.MaxTmpfsBytes {
				return refuse(fmt.Sprintf("the tmpfs mounts hold more than %d MiB: their contents travel in the image while the processes are frozen", core.MaxTmpfsBytes>>20))
			}
			if st.Size > 0 {
				var err error
				if tf.Data, err = ss.copyTmpfsFile(e.Dir, e.Name, int64(st.Size)); err != nil {
					return fmt.Errorf("tmpfs %s: %s: %w", m.Point, e.Path, err)
				}
			}
		case mode == unix.S_IFCHR && core.TmpfsDevices[unix.Mkdev(st.Rdev_major, st.Rdev_minor)] != "":
			tf.Rdev = unix.Mkdev(st.Rdev_major, st.Rdev_minor)
		default:
			return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, File: e.Path,
				Reason: fmt.Sprintf("%s is a special file (mode %#o, device %d:%d): only files, directories, symbolic links and the character devices of a container's /dev (null, zero, full, random, urandom, tty) are recreated", e.Path, st.Mode, st.Rdev_major, st.Rdev_minor)}
		}
		m.Files = append(m.Files, tf)
		return nil
	})
	if errors.Is(err, proc.ErrOtherMount) {
		return refuse("another mount covers it whole: its files cannot be read")
	}
	if err != nil {
		return fmt.Errorf("tmpfs %s: %w", m.Point, err)
	}
	return nil
}

// copyTmpfsFile stores the contents of a file of a tmpfs (size bytes, as
// it was listed) as a blob, without changing its access time.
func (ss *session) copyTmpfsFile(dir int, name string, size int64) (string, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var n int64
	blob, err := ss.copyBlob("tmpfs", io.TeeReader(io.LimitReader(f, size+1), countWriter{&n}))
	if err != nil {
		return "", err
	}
	if n != size {
		return "", errors.New("its size changed while it was read")
	}
	return blob, nil
}

type countWriter struct{ n *int64 }

func (c countWriter) Write(b []byte) (int, error) { *c.n += int64(len(b)); return len(b), nil }

// liveMounts describes the mount namespace of the process a live
// migration moves, if not migrate's (nil then): the table the first
// layout carries, tmpfs contents to come with the final state. The
// target fills a tmpfs once the processes exist, so a read-only one is
// refused. Every process of the tree (pids, the root first) must be in
// the root's namespace.
func liveMounts(pids []int) (*core.MountNS, error) {
	pid := pids[0]
	if err := sameMountNS(pids); err != nil {
		return nil, err
	}
	own, err := ownMountNS(pid)
	if err != nil || !own {
		return nil, err
	}
	ns, err := describeMounts(pid)
	if err != nil {
		return nil, err
	}
	bound := map[int]bool{} // tmpfs mounts with a part bound elsewhere
	for _, m := range ns.Mounts {
		if m.Kind == core.MountOwnBind {
			bound[m.Of] = true
		}
	}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if m.Kind == core.MountTmpfs && (bound[m.ID] || slices.Contains(strings.Split(m.Options, ","), "ro") || slices.Contains(strings.Split(m.Super, ","), "ro")) {
			if err := earlyTmpfs(pid, m); err != nil {
				return nil, err
			}
		}
	}
	return ns, nil
}

// earlyTmpfs describes the files of a tmpfs of a live migration's table
// at once, for the target to fill it as it mounts it: a read-only one
// (filled before it is made read-only), one a part of which is bound
// elsewhere (the device nodes of a container's /dev bound over masked
// paths). The final state's files must be the same (the target checks).
// One holding a file with contents is refused (the table carries no
// contents).
func earlyTmpfs(pid int, m *core.Mount) error {
	err := proc.WalkMount(pid, m.Point, uint64(m.ID), func(e *proc.MountEntry) error {
		if !e.Covered && e.Stat.Mode&unix.S_IFMT == unix.S_IFREG && e.Stat.Size > 0 {
			return &UnsupportedMountError{PID: pid, Point: m.Point, FSType: m.FSType, File: e.Path,
				Reason: "a tmpfs read-only or with a part bound elsewhere, holding a file with contents, cannot be moved live (its files are made as it is mounted, before the processes' state comes): dump and restore it"}
		}
		return nil
	})
	if err != nil {
		return err
	}
	var total int64
	return (&session{}).readTmpfs(pid, m, &total) // no contents to copy
}

// sameMountTable checks that the final table of a live migration is the
// one its first layout announced (the target built that one), but for
// the tmpfs files the final one adds.
func sameMountTable(first, final *core.MountNS) error {
	if !first.SameTable(final) {
		return errors.New("the mount table of the processes changed during the migration (the target built the first one)")
	}
	return nil
}

// sameMountNS refuses a tree (pids, the root first) whose processes are
// not all in the root's mount namespace.
func sameMountNS(pids []int) error {
	rootNS, err := mountNS(pids[0])
	if err != nil {
		return err
	}
	for _, pid := range pids[1:] {
		ns, err := mountNS(pid)
		if err != nil && exited(pid) {
			continue // it leaves the tree (a live migration's, read running)
		}
		if err != nil {
			return err
		}
		if ns != rootNS {
			return &BadTargetError{PID: pid, Reason: fmt.Sprintf("it lives in mount namespace %s, process %d in %s: a tree moves with one mount namespace", ns, pids[0], rootNS)}
		}
	}
	return nil
}

// xattrsOf names the extended attributes of a file of a mount (ACLs
// among them), but the security ones (labels, which the restoring host's
// policy gives).
func xattrsOf(e *proc.MountEntry) (string, error) {
	p := fmt.Sprintf("/proc/self/fd/%d", e.Dir)
	if e.Name != "" {
		p += "/" + e.Name
	}
	buf := make([]byte, 4096)
	list := unix.Llistxattr
	if e.Name == "" {
		list = unix.Listxattr // the directory behind the fd's link
	}
	n, err := list(p, buf)
	if errors.Is(err, unix.ERANGE) {
		return "many", nil
	}
	if err != nil || n == 0 {
		return "", err
	}
	var names []string
	for _, x := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(x, "security.") {
			names = append(names, x)
		}
	}
	return strings.Join(names, ", "), nil
}
