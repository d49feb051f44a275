package source

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// inotifyWatches turns the watches of an inotify fd into paths: fdinfo
// gives each watched inode's file handle and superblock, and
// open_by_handle_at on a mount of that superblock finds the inode again.
func inotifyWatches(info *proc.FDInfo) ([]core.InotifyWatch, error) {
	watches, err := info.InotifyWatches()
	if err != nil {
		return nil, err
	}
	var out []core.InotifyWatch
	mounts := map[uint32]int{} // superblock -> open mount point
	defer func() {
		for _, fd := range mounts {
			unix.Close(fd)
		}
	}()
	for _, w := range watches {
		mfd, ok := mounts[w.Sdev]
		if !ok {
			dir, err := mountOf(w.Sdev)
			if err != nil {
				return nil, fmt.Errorf("inotify watch %d: %w", w.WD, err)
			}
			// Not O_PATH: open_by_handle_at does not take such an fd.
			if mfd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
				return nil, fmt.Errorf("inotify watch %d: open %s: %w", w.WD, dir, err)
			}
			mounts[w.Sdev] = mfd
		}
		if len(w.FHandle) == 0 {
			return nil, fmt.Errorf("inotify watch %d: the kernel gave no file handle for inode %d", w.WD, w.Ino)
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(int32(w.FHandleType), w.FHandle), unix.O_PATH|unix.O_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("inotify watch %d: inode %d is gone: %w", w.WD, w.Ino, err)
		}
		path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		unix.Close(fd)
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(path, " (deleted)") {
			return nil, fmt.Errorf("inotify watch %d: %s", w.WD, path)
		}
		out = append(out, core.InotifyWatch{WD: w.WD, Path: path, Mask: w.Mask})
	}
	return out, nil
}

// mountOf finds a mount point of the filesystem with kernel device number
// sdev (major<<20 | minor, as inotify's fdinfo prints it).
func mountOf(sdev uint32) (string, error) {
	want := fmt.Sprintf("%d:%d", sdev>>20, sdev&0xfffff)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[2] == want && fields[3] == "/" {
			return fields[4], nil
		}
	}
	return "", fmt.Errorf("no mount of filesystem %s here", want)
}
