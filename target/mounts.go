package target

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// MountError is a mount of the image this host cannot give back: a host
// mount or a bind mount's host path that is not here.
type MountError struct {
	Point  string
	Reason string
}

func (e *MountError) Error() string {
	return fmt.Sprintf("mount %s of the image: %s", e.Point, e.Reason)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *MountError) AbortCode() string { return "mount" }

// The restored processes of an image with a mount namespace (Image.Mounts)
// are born in a new one, built by the husk before it forks the root: the
// husk, seized and single-threaded, is made to unshare(CLONE_NEWNS), make
// every mount of its copy of the restorer's namespace private (nothing
// done in it then reaches the restorer's or the host's), take detached
// copies of the host paths bind mounts bind (open_tree, before anything
// is unmounted), unmount what the image does not have, children first,
// then mount the image's own mounts in its order, parents before
// children. The restorer fills each tmpfs as soon as it is mounted,
// through /proc/HUSK/root. Nothing of this runs in the restorer itself.

// nsBuilder builds the mount namespace in the husk.
type nsBuilder struct {
	r  *restorer
	hp *ptrace.Proc
	ns *core.MountNS
	// cur is the husk's copy of the restorer's namespace, as it began.
	cur []proc.MountInfo
	// kept are the mounts of cur the image's host mounts are, by the
	// image's mount id; fresh the image's host mounts mounted afresh.
	kept  map[int]*proc.MountInfo
	fresh map[int]bool
	// binds are the husk's fds of the bind mounts' host paths, by the
	// image's mount id.
	binds map[int]uint64
}

// atFDCWD is AT_FDCWD as a system call argument.
const atFDCWD = uint64(1<<64 - 100)

// enterMountNS puts the husk into a new mount namespace built as the
// image's (nothing without Image.Mounts).
//
// Preconditions: the husk is seized, its gadget set.
func (r *restorer) enterMountNS() error {
	ns := r.img.Mounts
	if ns == nil {
		return nil
	}
	b := &nsBuilder{r: r, hp: r.hp}
	if err := b.build(ns); err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	return nil
}

func (b *nsBuilder) sys(name string, nr uintptr, args ...uint64) (uint64, error) {
	return b.hp.Syscall(b.hp.Leader(), name, nr, args...)
}

// put writes NUL-terminated strings into the husk's data page and returns
// their addresses, 0 for an empty one.
func (b *nsBuilder) put(strs ...string) ([]uint64, error) {
	var buf []byte
	addrs := make([]uint64, len(strs))
	for i, s := range strs {
		if s == "" {
			continue
		}
		addrs[i] = huskData + uint64(len(buf))
		buf = append(append(buf, s...), 0)
	}
	if len(buf) > 4096 {
		return nil, fmt.Errorf("arguments of %d bytes do not fit the husk's page", len(buf))
	}
	if _, err := ptrace.WriteMemForce(b.hp.PID, huskData, buf); err != nil {
		return nil, err
	}
	return addrs, nil
}

// mount runs mount(2) in the husk.
func (b *nsBuilder) mount(source, target, fstype string, flags uintptr, data string) error {
	a, err := b.put(source, target, fstype, data)
	if err != nil {
		return err
	}
	if _, err := b.sys("mount", unix.SYS_MOUNT, a[0], a[1], a[2], uint64(flags), a[3]); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// build builds the namespace, step by step, and compares it with the
// image's before any process is created in it.
func (b *nsBuilder) build(ns *core.MountNS) error {
	if _, err := b.sys("unshare", unix.SYS_UNSHARE, unix.CLONE_NEWNS); err != nil {
		return err
	}
	if ns.Pivoted {
		return b.buildPivoted(ns)
	}
	// Slaves first: nothing done here propagates out, and the host
	// mounts the image has as slaves still receive from the host's; every
	// other mount is made private (keepHost).
	if err := b.mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return err
	}
	cur, err := proc.ReadMountInfo(b.hp.PID)
	if err != nil {
		return err
	}
	b.ns, b.cur = ns, cur
	b.binds = map[int]uint64{}
	defer func() {
		for _, fd := range b.binds {
			b.sys("close", unix.SYS_CLOSE, fd)
		}
	}()
	for _, step := range []func() error{b.keepHost, b.takeBinds, b.unmountOthers, b.mountOwn, b.share} {
		if err := step(); err != nil {
			return err
		}
	}
	return b.compare()
}

// buildPivoted is build for a root filesystem pivoted into: nothing of
// the restorer's namespace is kept.
func (b *nsBuilder) buildPivoted(ns *core.MountNS) error {
	if err := b.mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return err
	}
	b.ns, b.kept, b.fresh, b.binds = ns, map[int]*proc.MountInfo{}, map[int]bool{}, map[int]uint64{}
	defer func() {
		for _, fd := range b.binds {
			b.sys("close", unix.SYS_CLOSE, fd)
		}
	}()
	for _, step := range []func() error{b.takeBinds, b.pivot, b.mountOwn, b.share} {
		if err := step(); err != nil {
			return err
		}
	}
	return b.compare()
}

// compare compares the namespace built with the image's, but for the
// mounts made from inside the container after.
func (b *nsBuilder) compare() error {
	ns := b.ns
	got, err := proc.ReadMountInfo(b.hp.PID)
	if err != nil {
		return err
	}
	own := slices.DeleteFunc(slices.Clone(ns.Mounts), func(m core.Mount) bool { return m.Container })
	if d := diffMounts(own, got); d != "" {
		return fmt.Errorf("the namespace built differs from the image's: %s", d)
	}
	return nil
}

// mountInContainer mounts the mounts of the container's own namespaces
// (core.Mount.Container: its proc, its mqueue), in the table's order, from
// inside them: the root, just cloned into them out of the husk (and into
// its mount namespace), mounts each. None is shared, and nothing is on
// them (the dump refuses both).
//
// Preconditions: the root is still a copy of the husk, seized.
func (r *restorer) mountInContainer() error {
	ns := r.img.Mounts
	if ns == nil {
		return nil
	}
	b := &nsBuilder{r: r, hp: r.p, ns: ns}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if !m.Container {
			continue
		}
		flags, err := mountFlags(m.Options)
		if err != nil {
			return &MountError{Point: m.Point, Reason: err.Error()}
		}
		if err := ensureMountPoint(r.pid, ns.Mounts[:i], m); err != nil {
			return fmt.Errorf("mount namespace: mount point %s: %w", m.Point, err)
		}
		switch m.Kind {
		case core.MountTmpfs:
			err = b.tmpfs(m, flags)
		case core.MountOwnBind:
			err = b.ownBind(m, flags)
		default:
			err = b.mount(m.Source, m.Point, m.FSType, flags, superData(m.Super))
		}
		if err != nil {
			return fmt.Errorf("mount namespace: in the container: %w", err)
		}
		if err := b.mount("", m.Point, "", unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("mount namespace: in the container: %w", err)
		}
	}
	return nil
}

// checkContainerMount checks that mount m of the image, of the
// container's own namespaces, is mounted at its place in the restored
// root's namespace (the topmost there, mount id) and shows the root's
// PID namespace (a proc) or IPC namespace (an mqueue); "" if so.
func checkContainerMount(root int, m *core.Mount, id int, dev string) string {
	switch m.FSType {
	case "proc":
		got, err := proc.MountPIDNS(root, m.Point, uint64(id))
		if err != nil {
			return "a proc whose process 1 cannot be read: " + err.Error()
		}
		want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", root))
		if err != nil {
			return err.Error()
		}
		if got != want {
			return fmt.Sprintf("a proc of PID namespace %s, not the container's %s", got, want)
		}
	case "mqueue":
		want, err := proc.MqueueDev(root)
		if err != nil {
			return err.Error()
		}
		if dev != want {
			return fmt.Sprintf("an mqueue of device %s, not the container's IPC namespace's %s", dev, want)
		}
	}
	return ""
}

// keepHost matches each host mount of the image with one of the copy of
// the restorer's namespace (kept), or finds it a virtual filesystem to
// mount afresh (fresh), and makes every mount of the copy private but
// the image's slaves.
func (b *nsBuilder) keepHost() error {
	b.kept, b.fresh = map[int]*proc.MountInfo{}, map[int]bool{}
	used := map[int]bool{}
	slaves := map[int]bool{} // of the copy
	for i := range b.ns.Mounts {
		m := &b.ns.Mounts[i]
		if m.Kind != core.MountHost {
			continue
		}
		for j := range b.cur {
			c := &b.cur[j]
			if !used[c.ID] && c.Dev == m.Dev && c.Root == m.Root && c.Point == m.Point && c.FSType == m.FSType {
				b.kept[m.ID], used[c.ID] = c, true
				break
			}
		}
		c := b.kept[m.ID]
		switch {
		case c == nil && core.FreshFSTypes[m.FSType] && m.Root == "/" && !m.Slave:
			// A virtual filesystem whose instance was the dumping host's
			// namespaces' (the sysfs of its network namespace): here this
			// host's instance, its counterpart here (the same
			// filesystem at the same place, with the same source and
			// superblock options) kept, or else mounted fresh. (Kept,
			// the next dump finds it the host's again, not a fresh one a
			// container's mount may cover.)
			for j := range b.cur {
				h := &b.cur[j]
				if !used[h.ID] && h.Point == m.Point && h.FSType == m.FSType && h.Root == m.Root && h.Source == m.Source && h.Super == m.Super {
					b.kept[m.ID], used[h.ID] = h, true
					break
				}
			}
			b.fresh[m.ID] = b.kept[m.ID] == nil
		case c == nil:
			return &MountError{Point: m.Point, Reason: fmt.Sprintf("%s %s of device %s, a mount of the dumping host, is not mounted here", m.FSType, m.Root, m.Dev)}
		case m.Slave && c.Master() == 0:
			return &MountError{Point: m.Point, Reason: "a slave of the dumping host's mount, but this host's is not shared"}
		case m.Slave:
			slaves[c.ID] = true
		}
	}
	for _, c := range b.cur {
		if c.Master() != 0 && !slaves[c.ID] {
			if err := b.mount("", c.Point, "", unix.MS_PRIVATE, ""); err != nil {
				return err
			}
		}
	}
	return nil
}

// takeBinds takes detached copies of the bind mounts' host paths, while
// every mount of the copy is still there.
func (b *nsBuilder) takeBinds() error {
	for i := range b.ns.Mounts {
		m := &b.ns.Mounts[i]
		if m.Kind != core.MountBind {
			continue
		}
		if err := checkBindSources(&core.MountNS{Mounts: []core.Mount{*m}}); err != nil {
			return err
		}
		a, err := b.put(m.From)
		if err != nil {
			return err
		}
		fd, err := b.sys("open_tree", unix.SYS_OPEN_TREE, atFDCWD, a[0], unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			return fmt.Errorf("open_tree %s: %w", m.From, err)
		}
		b.binds[m.ID] = fd
	}
	return nil
}

// unmountOthers unmounts every mount of the copy the image does not keep,
// children first (one gone with its parent is not looked for).
func (b *nsBuilder) unmountOthers() error {
	kept := map[int]bool{}
	for _, c := range b.kept {
		kept[c.ID] = true
	}
	for i := len(b.cur) - 1; i >= 0; i-- {
		c := &b.cur[i]
		if kept[c.ID] {
			continue
		}
		a, err := b.put(c.Point)
		if err != nil {
			return err
		}
		if _, err := b.sys("umount2", unix.SYS_UMOUNT2, a[0], unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			now, rerr := proc.ReadMountInfo(b.hp.PID)
			if rerr == nil && !slices.ContainsFunc(now, func(n proc.MountInfo) bool { return n.ID == c.ID }) {
				continue
			}
			return fmt.Errorf("unmount %s: %w", c.Point, err)
		}
	}
	return nil
}

// mountOwn mounts the image's own mounts in its order (and gives a kept
// one the options it had).
func (b *nsBuilder) mountOwn() error {
	for i := range b.ns.Mounts {
		m := &b.ns.Mounts[i]
		if m.Container || (b.ns.Pivoted && i == 0) {
			continue // mounted from inside the container (mountInContainer), or the root pivoted into (pivot)
		}
		flags, err := mountFlags(m.Options)
		if err != nil {
			return &MountError{Point: m.Point, Reason: err.Error()}
		}
		if m.Kind != core.MountHost || b.fresh[m.ID] {
			if err := ensureMountPoint(b.hp.PID, b.ns.Mounts[:i], m); err != nil {
				return fmt.Errorf("mount point %s: %w", m.Point, err)
			}
		}
		switch {
		case b.fresh[m.ID] || m.Kind == core.MountFresh:
			err = b.mount(m.Source, m.Point, m.FSType, flags, superData(m.Super))
		case m.Kind == core.MountHost:
			if b.kept[m.ID].Options != m.Options {
				err = b.mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
			}
		case m.Kind == core.MountBind:
			err = b.bind(m, flags)
		case m.Kind == core.MountTmpfs:
			err = b.tmpfs(m, flags)
		case m.Kind == core.MountOwnBind:
			err = b.ownBind(m, flags)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// bind moves the copy of m's host path to its mount point, with its flags.
func (b *nsBuilder) bind(m *core.Mount, flags uintptr) error {
	a, err := b.put("", m.Point)
	if err != nil {
		return err
	}
	if _, err := b.sys("move_mount", unix.SYS_MOVE_MOUNT, b.binds[m.ID], a[0], atFDCWD, a[1], unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s on %s: %w", m.From, m.Point, err)
	}
	return b.mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
}

// ownBind binds part of an earlier mount of the table (core.MountOwnBind)
// at m's mount point, with its flags.
func (b *nsBuilder) ownBind(m *core.Mount, flags uintptr) error {
	var of *core.Mount
	for i := range b.ns.Mounts {
		if b.ns.Mounts[i].ID == m.Of {
			of = &b.ns.Mounts[i]
		}
	}
	if of == nil {
		return &MountError{Point: m.Point, Reason: fmt.Sprintf("binds mount %d, not in the table", m.Of)}
	}
	src := path.Join(of.Point, strings.TrimPrefix(m.Root, of.Root))
	// The path comes from the image, and open_tree follows the symbolic
	// links of its intermediate components (a tmpfs of the image may
	// hold one leading out of the container): none may be on it.
	if err := noSymlinks(b.hp.PID, src); err != nil {
		return &MountError{Point: m.Point, Reason: fmt.Sprintf("binds %s, a path through a symbolic link or one that is not there: %v", src, err)}
	}
	a, err := b.put(src, "", m.Point)
	if err != nil {
		return err
	}
	fd, err := b.sys("open_tree", unix.SYS_OPEN_TREE, atFDCWD, a[0], unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", src, err)
	}
	defer b.sys("close", unix.SYS_CLOSE, fd)
	if _, err := b.sys("move_mount", unix.SYS_MOVE_MOUNT, fd, a[1], atFDCWD, a[2], unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, m.Point, err)
	}
	return b.mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
}

// tmpfs mounts tmpfs m writable, fills it, then makes it read-only if it
// was.
func (b *nsBuilder) tmpfs(m *core.Mount, flags uintptr) error {
	if err := b.mount(m.Source, m.Point, m.FSType, flags&^unix.MS_RDONLY, superData(m.Super)); err != nil {
		return err
	}
	if err := fillTmpfs(b.hp.PID, m, b.r.session); err != nil {
		return fmt.Errorf("tmpfs %s: %w", m.Point, err)
	}
	if slices.Contains(strings.Split(m.Super, ","), "ro") {
		if err := b.mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_RDONLY, superData(m.Super)); err != nil {
			return err
		}
	}
	if flags&unix.MS_RDONLY != 0 {
		return b.mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_BIND|flags, "")
	}
	return nil
}

// share makes the image's shared mounts shared, once all are there: a
// mount made under a shared one would be shared too.
func (b *nsBuilder) share() error {
	for _, m := range b.ns.Mounts {
		if m.Shared {
			if err := b.mount("", m.Point, "", unix.MS_SHARED, ""); err != nil {
				return err
			}
		}
	}
	return nil
}

// mountFlags turns per-mount options into mount(2) flags. Without
// noatime or relatime the mount has strict access times.
func mountFlags(opts string) (uintptr, error) {
	var f uintptr
	atime := false
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "rw":
		case "ro":
			f |= unix.MS_RDONLY
		case "nosuid":
			f |= unix.MS_NOSUID
		case "nodev":
			f |= unix.MS_NODEV
		case "noexec":
			f |= unix.MS_NOEXEC
		case "nosymfollow":
			f |= unix.MS_NOSYMFOLLOW
		case "nodiratime":
			f |= unix.MS_NODIRATIME
		case "noatime":
			f |= unix.MS_NOATIME
			atime = true
		case "relatime":
			f |= unix.MS_RELATIME
			atime = true
		default:
			return 0, fmt.Errorf("mount option %q is not known", o)
		}
	}
	if !atime {
		f |= unix.MS_STRICTATIME
	}
	return f, nil
}

// superData is a superblock's options without rw and ro (flags, not data).
func superData(super string) string {
	var out []string
	for _, o := range strings.Split(super, ",") {
		if o != "rw" && o != "ro" && o != "" {
			out = append(out, o)
		}
	}
	return strings.Join(out, ",")
}

// beneath opens directory rel under dir as an O_PATH fd, following no
// symbolic link and crossing no mount.
func beneath(dir int, rel string) (int, error) {
	return unix.Openat2(dir, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV})
}

// fillTmpfs creates the files of tmpfs m, mounted in process pid's
// namespace and empty but for the mount points of the mounts on it (a
// live migration's: see ensureMountPoint): every file with its mode and
// owner, times last (children before their directories). A covered file
// (a mount point) is made as Covered says, or left as it is.
func fillTmpfs(pid int, m *core.Mount, ss *session) error {
	top, err := proc.OpenInMountNS(pid, m.Point)
	if err != nil {
		return err
	}
	defer unix.Close(top)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(top, &fs); err != nil {
		return err
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s is not the tmpfs just mounted (filesystem %#x)", m.Point, fs.Type)
	}
	each := func(f *core.TmpfsFile, do func(dir int, name string) error) error {
		dir, err := beneath(top, path.Dir(f.Path))
		if err != nil {
			return err
		}
		defer unix.Close(dir)
		return do(dir, path.Base(f.Path))
	}
	for i := range m.Files {
		f := &m.Files[i]
		perm := f.Mode & 0o7777
		err := each(f, func(dir int, name string) error {
			if f.Covered {
				// Never chown or chmod it: that would reach the root of
				// the mount on it.
				var err error
				if f.Mode&unix.S_IFMT == unix.S_IFDIR {
					err = unix.Mkdirat(dir, name, 0o755)
				} else {
					err = mkfile(dir, name)
				}
				if errors.Is(err, unix.EEXIST) {
					return nil
				}
				return err
			}
			switch f.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				// A directory a live migration's first layout made for a
				// mount point may be there.
				var st unix.Stat_t
				if err := unix.Mkdirat(dir, name, 0o700); err != nil && (!errors.Is(err, unix.EEXIST) ||
					unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR) {
					return err
				}
			case unix.S_IFLNK:
				if err := unix.Symlinkat(f.Link, dir, name); err != nil {
					return err
				}
				return unix.Fchownat(dir, name, int(f.UID), int(f.GID), unix.AT_SYMLINK_NOFOLLOW)
			case unix.S_IFCHR:
				if err := unix.Mknodat(dir, name, unix.S_IFCHR|0o600, int(f.Rdev)); err != nil {
					return err
				}
			case unix.S_IFREG:
				if f.HardLink != "" {
					return each(&core.TmpfsFile{Path: f.HardLink}, func(odir int, oname string) error {
						return unix.Linkat(odir, oname, dir, name, 0)
					})
				}
				if err := writeFile(dir, name, f.Data, ss); err != nil {
					return err
				}
			}
			if err := unix.Fchownat(dir, name, int(f.UID), int(f.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
			return unix.Fchmodat(dir, name, perm, 0)
		})
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
	}
	for i := len(m.Files) - 1; i >= 0; i-- {
		f := &m.Files[i]
		if f.Covered {
			continue
		}
		err := each(f, func(dir int, name string) error {
			ts := []unix.Timespec{unix.NsecToTimespec(f.Atime), unix.NsecToTimespec(f.Mtime)}
			return unix.UtimesNanoAt(dir, name, ts, unix.AT_SYMLINK_NOFOLLOW)
		})
		if err != nil {
			return fmt.Errorf("%s: times: %w", f.Path, err)
		}
	}
	if t := m.Top; t != nil {
		self := fmt.Sprintf("/proc/self/fd/%d", top) // top is O_PATH
		if err := unix.Fchownat(top, "", int(t.UID), int(t.GID), unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
		if err := unix.Chmod(self, t.Mode&0o7777); err != nil {
			return fmt.Errorf("root directory: %w", err)
		}
		if err := unix.UtimesNano(self, []unix.Timespec{unix.NsecToTimespec(t.Atime), unix.NsecToTimespec(t.Mtime)}); err != nil {
			return fmt.Errorf("root directory: times: %w", err)
		}
	}
	return nil
}

// mkfile creates an empty file, root's, mode 0644.
func mkfile(dir int, name string) error {
	fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// writeFile creates file name in dir with the contents of blob.
func writeFile(dir int, name, blob string, ss *session) error {
	fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if blob == "" {
		return nil
	}
	src, err := ss.openBlob(ss.img, blob)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(f, src)
	return err
}

// normalMount is a mount as Check compares it: without mount ids and peer
// group numbers, which differ in every namespace.
func normalMount(m core.Mount, parent string, dev bool) string {
	prop := "private"
	if m.Shared {
		prop = "shared"
	}
	if m.Slave {
		prop = "slave"
	}
	s := fmt.Sprintf("%s root=%s %s source=%s options=%s super=%s %s parent=%s", m.Point, m.Root, m.FSType, m.Source, m.Options, m.Super, prop, parent)
	if dev {
		s += " dev=" + m.Dev
	}
	return s
}

// normalMounts lists a table's mounts normalised, by mount point (stacked
// mounts in their order); devices are compared where the image's mount
// is the host's (dev says which, by the image's order).
func normalMounts(ms []core.Mount, dev []bool) []string {
	points := map[int]string{}
	for _, m := range ms {
		points[m.ID] = m.Point
	}
	idx := make([]int, len(ms))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return strings.Compare(ms[a].Point, ms[b].Point) })
	out := make([]string, len(ms))
	for k, i := range idx {
		out[k] = normalMount(ms[i], points[ms[i].Parent], dev != nil && k < len(dev) && dev[k])
	}
	return out
}

// diffMounts compares a namespace's mountinfo with the image's table and
// says how they differ ("" if not).
func diffMounts(want []core.Mount, got []proc.MountInfo) string {
	var g []core.Mount
	for _, m := range got {
		g = append(g, core.Mount{ID: m.ID, Parent: m.Parent, Dev: m.Dev, Root: m.Root, Point: m.Point, Options: m.Options,
			Shared: m.Shared() != 0, Slave: m.Master() != 0, FSType: m.FSType, Source: m.Source, Super: m.Super})
	}
	// Devices of the host's and bound mounts, by the sorted order.
	sorted := slices.Clone(want)
	slices.SortStableFunc(sorted, func(a, b core.Mount) int { return strings.Compare(a.Point, b.Point) })
	dev := make([]bool, len(sorted))
	for i, m := range sorted {
		// Not of a virtual filesystem's: its instance may be this host's
		// (see build).
		dev[i] = (m.Kind == core.MountHost || m.Kind == core.MountBind) && !core.FreshFSTypes[m.FSType]
	}
	w, h := normalMounts(want, dev), normalMounts(g, dev)
	var diffs []string
	for i := 0; i < max(len(w), len(h)); i++ {
		switch {
		case i >= len(w):
			diffs = append(diffs, "extra mount "+h[i])
		case i >= len(h):
			diffs = append(diffs, "missing mount "+w[i])
		case w[i] != h[i]:
			diffs = append(diffs, fmt.Sprintf("mount %s, want %s", h[i], w[i]))
		}
	}
	return strings.Join(diffs, "; ")
}

// checkMounts compares the mount namespace of the restored processes with
// the image's: every process in the root's, its table (normalised, see
// diffMounts) and the files of each tmpfs.
func (b *Builder) checkMounts() []Difference {
	ns := b.ss.img.Mounts
	if ns == nil || len(b.all) == 0 {
		return nil
	}
	root := b.all[0].pid
	diffs, ok := checkOwnNamespace(b.all, "mnt", "mount")
	if !ok {
		return diffs
	}
	got, err := proc.ReadMountInfo(root)
	if err != nil {
		return append(diffs, Difference{PID: root, What: "mount table", Want: "readable", Got: err.Error()})
	}
	if d := diffMounts(ns.Mounts, got); d != "" {
		diffs = append(diffs, Difference{PID: root, What: "mount table", Want: "the image's", Got: d})
	}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if !m.Container || m.Kind != core.MountFresh || (m.FSType != "proc" && m.FSType != "mqueue") {
			continue
		}
		// The topmost mount at its point (nothing is on it).
		var top *proc.MountInfo
		for j := range got {
			if got[j].Point == m.Point {
				top = &got[j]
			}
		}
		what := fmt.Sprintf("%s %s of the container's namespaces", m.FSType, m.Point)
		if top == nil || top.FSType != m.FSType {
			diffs = append(diffs, Difference{PID: root, What: what, Want: "mounted", Got: "not the topmost mount there"})
		} else if d := checkContainerMount(root, m, top.ID, top.Dev); d != "" {
			diffs = append(diffs, Difference{PID: root, What: what, Want: "the container's", Got: d})
		}
	}
	for i := range ns.Mounts {
		m := &ns.Mounts[i]
		if m.Kind != core.MountTmpfs {
			continue
		}
		wantFiles := m.Files
		if m.Top != nil {
			wantFiles = append([]core.TmpfsFile{*m.Top}, m.Files...)
		}
		blobs := b.ss.img.Blobs
		if blobs == nil {
			blobs = map[string]core.Blob{} // sizes from the image (none: every file empty)
		}
		want := tmpfsListing(wantFiles, blobs)
		files, err := listTmpfs(root, m.Point)
		if err == nil && m.Top == nil && len(files) > 0 {
			files = files[1:] // the root directory, which the image does not describe
		}
		if err != nil {
			diffs = append(diffs, Difference{PID: root, What: "tmpfs " + m.Point, Want: "readable", Got: err.Error()})
			continue
		}
		if g := tmpfsListing(files, nil); !slices.Equal(want, g) {
			diffs = append(diffs, Difference{PID: root, What: "tmpfs " + m.Point, Want: strings.Join(want, "; "), Got: strings.Join(g, "; ")})
		}
	}
	return diffs
}

// tmpfsListing describes files one a line, as Check compares them: sizes
// from the blobs where blobs is given, else from Atime (listTmpfs puts
// the size there: access times change as files are read).
func tmpfsListing(files []core.TmpfsFile, blobs map[string]core.Blob) []string {
	out := make([]string, 0, len(files))
	for _, f := range files {
		if f.Covered {
			// What it covers cannot be seen: only that it is there.
			out = append(out, f.Path+" covered")
			continue
		}
		size := f.Atime
		if blobs != nil {
			size = blobs[f.Data].Size
		}
		if f.HardLink != "" {
			size = 0
		}
		s := fmt.Sprintf("%s mode=%#o owner=%d:%d mtime=%d size=%d link=%q hardlink=%q",
			f.Path, f.Mode, f.UID, f.GID, f.Mtime, size, f.Link, f.HardLink)
		if f.Rdev != 0 {
			s += fmt.Sprintf(" rdev=%d:%d", f.Rdev>>8, f.Rdev&0xff)
		}
		out = append(out, s)
	}
	return out
}

// listTmpfs lists the files of the tmpfs at point in process pid's mount
// namespace as the dump does (proc.WalkMount), sizes in Atime.
func listTmpfs(pid int, point string) ([]core.TmpfsFile, error) {
	var out []core.TmpfsFile
	links := map[uint64]string{}
	err := proc.WalkMount(pid, point, 0, func(e *proc.MountEntry) error {
		st := &e.Stat
		tf := core.TmpfsFile{Path: e.Path, Mode: uint32(st.Mode), UID: st.Uid, GID: st.Gid,
			Mtime: st.Mtime.Sec*1e9 + int64(st.Mtime.Nsec), Covered: e.Covered}
		switch uint32(st.Mode) & unix.S_IFMT {
		case unix.S_IFLNK:
			var err error
			if tf.Link, err = proc.Readlinkat(e.Dir, e.Name); err != nil {
				return err
			}
		case unix.S_IFCHR:
			tf.Rdev = unix.Mkdev(st.Rdev_major, st.Rdev_minor)
		case unix.S_IFREG:
			tf.Atime = int64(st.Size)
			if first, ok := links[st.Ino]; ok && st.Nlink > 1 {
				tf.HardLink = first
			} else {
				links[st.Ino] = e.Path
			}
		}
		out = append(out, tf)
		return nil
	})
	return out, err
}

// ensureMountPoint makes the mount point of m when it is on a tmpfs of
// the image (mounted before it, among earlier) not filled yet (a live
// migration's, whose files come with the final state): directories
// root's, mode 0755, and for a bind mount of a file an empty file.
func ensureMountPoint(pid int, earlier []core.Mount, m *core.Mount) error {
	var on *core.Mount
	for i := range earlier {
		e := &earlier[i]
		if e.Point != m.Point && (e.Point == "/" || strings.HasPrefix(m.Point, e.Point+"/")) && (on == nil || len(e.Point) >= len(on.Point)) {
			on = e
		}
	}
	if on == nil || on.Kind != core.MountTmpfs {
		return nil
	}
	dir, err := proc.OpenInMountNS(pid, on.Point)
	if err != nil {
		return err
	}
	parts := strings.Split(strings.TrimPrefix(m.Point, strings.TrimSuffix(on.Point, "/")+"/"), "/")
	for i, name := range parts {
		last := i == len(parts)-1
		if last && m.Kind == core.MountBind {
			if fi, err := os.Lstat(m.From); err == nil && !fi.IsDir() {
				err = mkfile(dir, name)
				unix.Close(dir)
				if errors.Is(err, unix.EEXIST) {
					return nil
				}
				return err
			}
		}
		if err := unix.Mkdirat(dir, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(dir)
			return err
		}
		next, err := beneath(dir, name)
		unix.Close(dir)
		if err != nil {
			return err
		}
		dir = next
	}
	return unix.Close(dir)
}

// fillLiveMounts fills the tmpfs mounts of a live migration's namespace,
// built empty at the first layout (table first), with the files of the
// final image: its table must be the first one.
func (b *Builder) fillLiveMounts(first *core.MountNS) error {
	ns := b.ss.img.Mounts
	if !first.SameTable(ns) {
		return errors.New("mount namespace: the final image's mount table is not the one the processes were created in")
	}
	if ns == nil {
		return nil
	}
	for i := range ns.Mounts {
		if m := &ns.Mounts[i]; m.Kind == core.MountTmpfs {
			if f := &first.Mounts[i]; f.Top != nil {
				// Filled as it was mounted, from the first layout: its files
				// must not have changed since.
				if w, g := tmpfsListing(m.Files, map[string]core.Blob{}), tmpfsListing(f.Files, map[string]core.Blob{}); !slices.Equal(w, g) {
					return fmt.Errorf("mount namespace: tmpfs %s: its files changed during the migration (it was filled as it was mounted): %s, was %s", m.Point, strings.Join(w, "; "), strings.Join(g, "; "))
				}
				continue
			}
			if err := fillTmpfs(b.all[0].pid, m, b.ss); err != nil {
				return fmt.Errorf("mount namespace: tmpfs %s: %w", m.Point, err)
			}
		}
	}
	return nil
}

// checkBindSources refuses a table whose bind mount binds a host path
// that is not here (before anything is created; again as it is bound).
func checkBindSources(ns *core.MountNS) error {
	if ns == nil {
		return nil
	}
	for _, m := range ns.Mounts {
		if m.Kind != core.MountBind {
			continue
		}
		if _, err := os.Lstat(m.From); err != nil {
			return &MountError{Point: m.Point, Reason: fmt.Sprintf("the host path it binds, %s, is not here: %v", m.From, err)}
		}
	}
	return nil
}

// noSymlinks checks that path p, in the root and mount namespace of
// process pid, leads to a file without a symbolic (or magic) link on the
// way, the last component included.
func noSymlinks(pid int, p string) error {
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.ELOOP
	}
	return nil
}
