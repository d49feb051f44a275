package proc

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrOtherMount is returned by WalkMount when the topmost mount at the
// point is not the one asked for.
var ErrOtherMount = errors.New("another mount is at that point")

// OpenInMountNS opens directory p (absolute) of process pid's mount
// namespace, as the process sees it from its root, as an O_PATH fd,
// following no symbolic link.
func OpenInMountNS(pid int, p string) (int, error) {
	root, err := unix.Open(fmt.Sprintf("%s/%d/root", Root, pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	rel := strings.TrimPrefix(p, "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(root, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
}

// MountEntry is a file of a mount, as WalkMount finds it.
type MountEntry struct {
	Path string // relative to the mount's root
	Stat unix.Statx_t
	// Covered is the mount point of another mount: Stat is that mount's
	// root, and what it covers is not walked.
	Covered bool
	// Dir and Name reach the file (for *at calls) while the callback
	// runs: Dir is its directory, open.
	Dir  int
	Name string
}

// WalkMount calls fn for the root directory (Path ".", Dir the mount's
// root, Name "") and every file of the mount at point in process pid's
// mount namespace (the topmost there; with wantID, that mount, or
// ErrOtherMount), names sorted, each directory before its contents, never
// into another mount.
func WalkMount(pid int, point string, wantID uint64, fn func(e *MountEntry) error) error {
	top, err := OpenInMountNS(pid, point)
	if err != nil {
		return err
	}
	defer unix.Close(top)
	var st unix.Statx_t
	if err := unix.Statx(top, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, &st); err != nil {
		return err
	}
	if wantID != 0 && st.Mnt_id != wantID {
		return ErrOtherMount
	}
	mnt := st.Mnt_id
	if err := fn(&MountEntry{Path: ".", Stat: st, Dir: top}); err != nil {
		return err
	}
	var walk func(dir int, rel string) error
	walk = func(dir int, rel string) error {
		f := os.NewFile(uintptr(dir), rel)
		defer f.Close()
		names, err := f.Readdirnames(-1)
		if err != nil {
			return fmt.Errorf("read directory %q: %w", rel, err)
		}
		slices.Sort(names)
		for _, name := range names {
			e := MountEntry{Path: path.Join(rel, name), Dir: dir, Name: name}
			if err := unix.Statx(dir, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, &e.Stat); err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			e.Covered = e.Stat.Mnt_id != mnt
			if err := fn(&e); err != nil {
				return err
			}
			if e.Covered || e.Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
				continue
			}
			sub, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("%s: %w", e.Path, err)
			}
			if err := walk(sub, e.Path); err != nil {
				return err
			}
		}
		return nil
	}
	dir, err := unix.Openat(top, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return walk(dir, "")
}

// Readlinkat reads the target of symbolic link name in dir.
func Readlinkat(dir int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	if n >= len(buf) {
		return "", fmt.Errorf("symbolic link %s: target too long", name)
	}
	return string(buf[:n]), nil
}

// MountPIDNS returns the PID namespace (as /proc/PID/ns/pid names it) of
// the proc filesystem mounted at point in process pid's mount namespace:
// that of its process 1. The topmost mount at point must be mount
// mountID, or it is ErrOtherMount.
func MountPIDNS(pid int, point string, mountID uint64) (string, error) {
	fd, err := OpenInMountNS(pid, point)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
		return "", err
	}
	if st.Mnt_id != mountID {
		return "", ErrOtherMount
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return "", err
	}
	if fs.Type != unix.PROC_SUPER_MAGIC {
		return "", fmt.Errorf("%s is not a proc filesystem (%#x)", point, fs.Type)
	}
	return Readlinkat(fd, "1/ns/pid")
}

// MqueueDev returns the device (major:minor, as mountinfo shows it) of
// the mqueue filesystem of process pid's IPC namespace: every mqueue
// mounted in that namespace has it.
func MqueueDev(pid int) (string, error) {
	var dev string
	err := inMqueue(pid, func(mnt int) error {
		var st unix.Stat_t
		if err := unix.Fstat(mnt, &st); err != nil {
			return err
		}
		dev = fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
		return nil
	})
	return dev, err
}

// MqueueNames returns the POSIX message queues of process pid's IPC
// namespace, by name ("/q"), whoever holds them open (or nobody).
func MqueueNames(pid int) ([]string, error) {
	var names []string
	err := inMqueue(pid, func(mnt int) error {
		fd, err := unix.Openat(mnt, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		d := os.NewFile(uintptr(fd), "mqueue")
		defer d.Close()
		ents, err := d.Readdirnames(-1)
		for _, n := range ents {
			names = append(names, "/"+n)
		}
		return err
	})
	return names, err
}

// inMqueue calls fn with a detached mount (an fd, never in any mount
// table) of the mqueue filesystem of process pid's IPC namespace.
func inMqueue(pid int, fn func(mnt int) error) error {
	return InNamespace(pid, unix.CLONE_NEWIPC, func() error {
		fs, err := unix.Fsopen("mqueue", unix.FSOPEN_CLOEXEC)
		if err != nil {
			return fmt.Errorf("fsopen mqueue: %w", err)
		}
		defer unix.Close(fs)
		if err := unix.FsconfigCreate(fs); err != nil {
			return fmt.Errorf("create mqueue: %w", err)
		}
		mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("fsmount mqueue: %w", err)
		}
		defer unix.Close(mnt)
		return fn(mnt)
	})
}
