package filesync

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Applier writes a sync stream on the target: to staging files until
// Commit (see the package comment). Not for concurrent use.
type Applier struct {
	tag    string
	roots  []string
	bases  map[string]int // root → fd of the directory its paths are opened from
	staged map[string]*staged
	order  []*staged
	dirs   []*madeDir // created, parents first
	known  map[string]bool
	// Bytes is what the blocks wrote.
	Bytes int64
	done  bool
}

type staged struct {
	path, name string // the path; its staging file's name in dir
	dir        int    // the directory holding both
	f          *os.File
	h          Header // the last header
}

type madeDir struct {
	dir  int // the parent's fd
	name string
	path string
	h    Header
}

// ErrRefused: the target refuses a synced file (another owner's file, not
// a regular file, a root missing here). The error wrapping it names it.
var ErrRefused = errors.New("filesync: refused")

// NewApplier prepares to write the trees roots (checked with CheckRoots)
// on this host; tag (a session's ID) names its staging files. The
// directory of each root (the root itself, or a file root's parent) must
// exist here, reached without a symlink.
func NewApplier(roots []string, tag string) (*Applier, error) {
	if err := CheckRoots(roots); err != nil {
		return nil, err
	}
	a := &Applier{tag: tag, roots: roots, bases: map[string]int{}, staged: map[string]*staged{}, known: map[string]bool{}}
	for _, root := range roots {
		fd, err := unix.Openat2(unix.AT_FDCWD, root, &unix.OpenHow{
			Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if errors.Is(err, unix.ENOENT) {
			// A file root (or a root made by the copy): its parent must
			// be here.
			fd, err = unix.Openat2(unix.AT_FDCWD, filepath.Dir(root), &unix.OpenHow{
				Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
			if err == nil {
				a.bases[filepath.Dir(root)+"\x00"+root] = fd
				continue
			}
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("%w: synced path %s: %w", ErrRefused, root, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			a.Close()
			return nil, &os.PathError{Op: "fstat", Path: root, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// A file root: opened from its parent.
			unix.Close(fd)
			fd, err = unix.Openat2(unix.AT_FDCWD, filepath.Dir(root), &unix.OpenHow{
				Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
			if err != nil {
				a.Close()
				return nil, fmt.Errorf("%w: synced path %s: %w", ErrRefused, root, err)
			}
			a.bases[filepath.Dir(root)+"\x00"+root] = fd
			continue
		}
		a.bases[root+"\x00"+root] = fd
	}
	return a, nil
}

// base returns the directory fd and the path below it of path.
func (a *Applier) base(path string) (int, string, error) {
	for key, fd := range a.bases {
		dir, root, _ := strings.Cut(key, "\x00")
		if path != root && !strings.HasPrefix(path, root+"/") {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(path, dir), "/")
		if rel == "" {
			return fd, ".", nil
		}
		return fd, rel, nil
	}
	return -1, "", streamErr("%s is under none of the synced paths %v", path, a.roots)
}

// dirOf opens the directory that holds rel below base, without leaving
// base and without following a symlink.
func dirOf(base int, rel string) (int, string, error) {
	parent, name := filepath.Split(rel)
	if name == "" || name == "." || name == ".." {
		return -1, "", streamErr("bad name %q", rel)
	}
	if parent == "" {
		parent = "."
	}
	fd, err := unix.Openat2(base, parent, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return -1, "", err
	}
	return fd, name, nil
}

// Apply writes the records of r until the end record. round, if set, is
// told of each round record.
func (a *Applier) Apply(r *Reader, round func(uint32)) error {
	var cur *staged
	for {
		rec, err := r.Next()
		if err != nil {
			return err
		}
		switch {
		case rec.Header != nil:
			cur = nil
			if rec.Header.Dir() {
				if err := a.dir(rec.Header); err != nil {
					return err
				}
				continue
			}
			if cur, err = a.file(rec.Header); err != nil {
				return err
			}
		case rec.Data != nil:
			if cur == nil {
				return streamErr("a block record outside a file")
			}
			if _, err := cur.f.WriteAt(rec.Data, rec.Off); err != nil {
				return fmt.Errorf("write %s: %w", cur.path, err)
			}
			a.Bytes += int64(len(rec.Data))
		case rec.IsRound:
			cur = nil
			if round != nil {
				round(rec.Round)
			}
		case rec.End:
			return nil
		}
	}
}

// dir makes the directory h names if it is not here.
func (a *Applier) dir(h *Header) error {
	if a.known[h.Path] {
		return nil
	}
	base, rel, err := a.base(h.Path)
	if err != nil {
		return err
	}
	if rel == "." {
		a.known[h.Path] = true
		return nil // the root itself, here already
	}
	dir, name, err := dirOf(base, rel)
	if err != nil {
		return fmt.Errorf("%w: directory of %s: %w", ErrRefused, h.Path, err)
	}
	var st unix.Stat_t
	err = unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		unix.Close(dir)
	case err == nil:
		unix.Close(dir)
		return fmt.Errorf("%w: %s is a directory on the source, not here", ErrRefused, h.Path)
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkdirat(dir, name, 0o700); err != nil {
			unix.Close(dir)
			return &os.PathError{Op: "mkdir", Path: h.Path, Err: err}
		}
		a.dirs = append(a.dirs, &madeDir{dir: dir, name: name, path: h.Path, h: *h})
	default:
		unix.Close(dir)
		return &os.PathError{Op: "stat", Path: h.Path, Err: err}
	}
	a.known[h.Path] = true
	return nil
}

// file returns the staging file of the file h names, made at its first
// header, cut to h's size.
func (a *Applier) file(h *Header) (*staged, error) {
	s := a.staged[h.Path]
	if s == nil {
		base, rel, err := a.base(h.Path)
		if err != nil {
			return nil, err
		}
		if rel == "." {
			return nil, streamErr("%s: a synced directory sent as a file", h.Path)
		}
		dir, name, err := dirOf(base, rel)
		if err != nil {
			return nil, fmt.Errorf("%w: directory of %s: %w", ErrRefused, h.Path, err)
		}
		var st unix.Stat_t
		switch err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			unix.Close(dir)
			return nil, &os.PathError{Op: "stat", Path: h.Path, Err: err}
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			unix.Close(dir)
			return nil, fmt.Errorf("%w: %s is a regular file on the source, not here", ErrRefused, h.Path)
		case st.Uid != h.UID:
			unix.Close(dir)
			return nil, fmt.Errorf("%w: %s here is user %d's, the source's user %d's: it is not replaced", ErrRefused, h.Path, st.Uid, h.UID)
		}
		s = &staged{path: h.Path, dir: dir, name: ".migrate-sync-" + a.tag + "-" + strconv.Itoa(len(a.order))}
		fd, err := unix.Openat2(dir, s.name, &unix.OpenHow{
			Flags: unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC, Mode: 0o600,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			unix.Close(dir)
			return nil, &os.PathError{Op: "create", Path: filepath.Join(filepath.Dir(h.Path), s.name), Err: err}
		}
		s.f = os.NewFile(uintptr(fd), h.Path)
		a.staged[h.Path] = s
		a.order = append(a.order, s)
	}
	s.h = *h
	if err := s.f.Truncate(h.Size); err != nil {
		return nil, fmt.Errorf("truncate %s: %w", h.Path, err)
	}
	return s, nil
}

// Commit puts every staged file in its place, with the source's owner,
// mode and times, and gives the directories made theirs. After it,
// Discard leaves the files.
func (a *Applier) Commit() error {
	a.done = true
	for _, s := range a.order {
		fd := int(s.f.Fd())
		if err := unix.Fchown(fd, int(s.h.UID), int(s.h.GID)); err != nil {
			return &os.PathError{Op: "chown", Path: s.path, Err: err}
		}
		// After the owner: chown clears the set-id bits.
		if err := unix.Fchmod(fd, s.h.Mode&0o7777); err != nil {
			return &os.PathError{Op: "chmod", Path: s.path, Err: err}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(s.h.Atime), unix.NsecToTimespec(s.h.Mtime)}
		if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
			return &os.PathError{Op: "utimensat", Path: s.path, Err: err}
		}
		if err := unix.Renameat(s.dir, s.name, s.dir, s.name0()); err != nil {
			return &os.PathError{Op: "rename", Path: s.path, Err: err}
		}
	}
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		if err := unix.Fchownat(d.dir, d.name, int(d.h.UID), int(d.h.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "chown", Path: d.path, Err: err}
		}
		if err := unix.Fchmodat(d.dir, d.name, d.h.Mode&0o7777, 0); err != nil {
			return &os.PathError{Op: "chmod", Path: d.path, Err: err}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(d.h.Atime), unix.NsecToTimespec(d.h.Mtime)}
		if err := unix.UtimesNanoAt(d.dir, d.name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "utimensat", Path: d.path, Err: err}
		}
	}
	return nil
}

// name0 is the name of the synced file in its directory.
func (s *staged) name0() string { return filepath.Base(s.path) }

// Discard removes what was written, unless Commit ran. Before Close.
func (a *Applier) Discard() {
	if a.done {
		return
	}
	for _, s := range a.order {
		unix.Unlinkat(s.dir, s.name, 0)
	}
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		unix.Unlinkat(d.dir, d.name, unix.AT_REMOVEDIR) // only if empty
	}
}

// Close releases the files and directories held.
func (a *Applier) Close() error {
	for _, s := range a.order {
		s.f.Close()
		unix.Close(s.dir)
	}
	a.order, a.staged = nil, map[string]*staged{}
	for _, d := range a.dirs {
		unix.Close(d.dir)
	}
	a.dirs = nil
	for k, fd := range a.bases {
		unix.Close(fd)
		delete(a.bases, k)
	}
	return nil
}
