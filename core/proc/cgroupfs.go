package proc

import (
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupMountFor finds a mount of hierarchy controllers ("" for cgroup2)
// that shows path (from the hierarchy's root), and path's directory
// relative to the mount ("." for the mount's own).
func CgroupMountFor(mounts []CgroupMount, controllers, path string) (CgroupMount, string, bool) {
	for _, m := range mounts {
		if m.Controllers != controllers {
			continue
		}
		root := strings.TrimSuffix(m.Root, "/")
		if path == m.Root || root == "" || strings.HasPrefix(path, root+"/") {
			rel := strings.TrimPrefix(strings.TrimPrefix(path, root), "/")
			if rel == "" {
				rel = "."
			}
			return m, rel, true
		}
	}
	return CgroupMount{}, "", false
}

// OpenBeneath opens name below directory dir, resolving it without
// symbolic links, magic links or mount crossings, whatever name says
// (a cgroup path from an image or another host).
func OpenBeneath(dir, name string, flags int) (*os.File, error) {
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, name, &unix.OpenHow{
		Flags:   uint64(flags) | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir + "/" + name, Err: err}
	}
	return os.NewFile(uintptr(fd), dir+"/"+name), nil
}

// ReadCgroupFile reads file of cgroup directory rel below the mount at
// dir (OpenBeneath), without its final newline.
func ReadCgroupFile(dir, rel, file string) (string, error) {
	f, err := OpenBeneath(dir, rel+"/"+file, unix.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// ReadCgroupFileLimit is ReadCgroupFile for a file of up to limit bytes
// (cgroup.procs); a longer one is an error.
func ReadCgroupFileLimit(dir, rel, file string, limit int64) (string, error) {
	f, err := OpenBeneath(dir, rel+"/"+file, unix.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return "", err
	}
	if int64(len(b)) > limit {
		return "", &os.PathError{Op: "read", Path: f.Name(), Err: unix.EFBIG}
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}
