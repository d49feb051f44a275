package target

import (
	"context"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// openInotify recreates an inotify instance with its watches under their
// old watch descriptors. The kernel hands out descriptors in increasing
// order, so a gap is made by adding and removing a watch on a scratch file
// as often as needed. Events queued at dump time are not kept.
//
// The image's watch descriptors are bounded (core.MaxInotifyWD) and ctx is
// checked as the gaps are made.
func (r *restorer) openInotify(ctx context.Context, fd *core.FD) (*os.File, error) {
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(ifd), "inotify")
	watches := append([]core.InotifyWatch(nil), fd.Inotify...)
	sort.Slice(watches, func(i, j int) bool { return watches[i].WD < watches[j].WD })
	var scratch string
	next := 1
	for _, w := range watches {
		if w.WD < next {
			f.Close()
			return nil, fmt.Errorf("inotify watch %d listed twice", w.WD)
		}
		for n := 0; next < w.WD; n++ {
			if n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					f.Close()
					return nil, err
				}
			}
			if scratch == "" {
				tmp, err := os.CreateTemp("", "migrate-inotify-")
				if err != nil {
					f.Close()
					return nil, err
				}
				tmp.Close()
				scratch = tmp.Name()
				defer os.Remove(scratch)
			}
			wd, err := unix.InotifyAddWatch(ifd, scratch, unix.IN_ATTRIB)
			if err != nil {
				f.Close()
				return nil, err
			}
			unix.InotifyRmWatch(ifd, uint32(wd))
			next = wd + 1
		}
		// Only the bits inotify_add_watch takes.
		mask := w.Mask & (unix.IN_ALL_EVENTS | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK | unix.IN_ONESHOT)
		wd, err := unix.InotifyAddWatch(ifd, w.Path, mask)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("inotify watch %d on %s: %w", w.WD, w.Path, err)
		}
		if wd != w.WD {
			f.Close()
			return nil, fmt.Errorf("inotify watch on %s got descriptor %d, want %d", w.Path, wd, w.WD)
		}
		next = wd + 1
	}
	if err := setFlags(f, fd.Flags); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
