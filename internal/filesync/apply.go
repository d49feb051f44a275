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
// Commit (see the package comment). It holds an fd for each root and the
// file being written, no more (a tree may have many files). Not for
// concurrent use.
type Applier struct {
	tag    string
	roots  []string
	bases  map[string]int // root → fd of the directory its paths are opened from
	staged map[string]*staged
	order  []*staged
	dirs   []*entry // directories created, parents first
	known  map[string]bool
	// Bytes is what the blocks wrote.
	Bytes int64
	done  bool
}

// entry is a file or directory below a base: reopened from it, beneath
// it, whenever it is used.
type entry struct {
	path string // on both hosts
	base int
	rel  string // path below base
	h    Header // the last header
}

// staged is a synced file written to a staging file in its directory.
type staged struct {
	entry
	name string // the staging file's
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

// base returns the directory fd and the path below it of path, from the
// deepest root that holds it.
func (a *Applier) base(path string) (int, string, error) {
	best, bestRoot, bestDir := -1, "", ""
	for key, fd := range a.bases {
		dir, root, _ := strings.Cut(key, "\x00")
		if (path == root || strings.HasPrefix(path, root+"/")) && len(root) > len(bestRoot) {
			best, bestRoot, bestDir = fd, root, dir
		}
	}
	if best < 0 {
		return -1, "", streamErr("%s is under none of the synced paths %v", path, a.roots)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(path, bestDir), "/")
	if rel == "" {
		rel = "."
	}
	return best, rel, nil
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
	var cur *os.File
	var curPath string
	defer func() {
		if cur != nil {
			cur.Close()
		}
	}()
	next := func() {
		if cur != nil {
			cur.Close()
			cur = nil
		}
	}
	for {
		rec, err := r.Next()
		if err != nil {
			return err
		}
		switch {
		case rec.Header != nil:
			next()
			if rec.Header.Dir() {
				if err := a.dir(rec.Header); err != nil {
					return err
				}
				continue
			}
			if cur, err = a.file(rec.Header); err != nil {
				return err
			}
			curPath = rec.Header.Path
		case rec.Data != nil:
			if cur == nil {
				return streamErr("a block record outside a file")
			}
			if _, err := cur.WriteAt(rec.Data, rec.Off); err != nil {
				return fmt.Errorf("write %s: %w", curPath, err)
			}
			a.Bytes += int64(len(rec.Data))
		case rec.IsRound:
			next()
			if round != nil {
				round(rec.Round)
			}
		case rec.End:
			return nil
		}
	}
}

// at opens the directory that holds e (beneath its base, no symlink
// followed) and returns it with e's name in it.
func (e *entry) at() (int, string, error) {
	return dirOf(e.base, e.rel)
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
	e := &entry{path: h.Path, base: base, rel: rel, h: *h}
	dir, name, err := e.at()
	if err != nil {
		return fmt.Errorf("%w: directory of %s: %w", ErrRefused, h.Path, err)
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	err = unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
	case err == nil:
		return fmt.Errorf("%w: %s is a directory on the source, not here", ErrRefused, h.Path)
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkdirat(dir, name, 0o700); err != nil {
			return &os.PathError{Op: "mkdir", Path: h.Path, Err: err}
		}
		a.dirs = append(a.dirs, e)
	default:
		return &os.PathError{Op: "stat", Path: h.Path, Err: err}
	}
	a.known[h.Path] = true
	return nil
}

// beneath is openat2's resolution for every path below a root.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// file opens the staging file of the file h names, made at its first
// header, cut to h's size.
func (a *Applier) file(h *Header) (*os.File, error) {
	s := a.staged[h.Path]
	create := s == nil
	if create {
		base, rel, err := a.base(h.Path)
		if err != nil {
			return nil, err
		}
		if rel == "." {
			return nil, streamErr("%s: a synced directory sent as a file", h.Path)
		}
		s = &staged{entry: entry{path: h.Path, base: base, rel: rel}, name: ".migrate-sync-" + a.tag + "-" + strconv.Itoa(len(a.order))}
	}
	dir, name, err := s.at()
	if err != nil {
		return nil, fmt.Errorf("%w: directory of %s: %w", ErrRefused, h.Path, err)
	}
	defer unix.Close(dir)
	how := &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: beneath}
	if create {
		var st unix.Stat_t
		switch err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			return nil, &os.PathError{Op: "stat", Path: h.Path, Err: err}
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			return nil, fmt.Errorf("%w: %s is a regular file on the source, not here", ErrRefused, h.Path)
		case st.Uid != h.UID:
			return nil, fmt.Errorf("%w: %s here is user %d's, the source's user %d's: it is not replaced", ErrRefused, h.Path, st.Uid, h.UID)
		}
		how.Flags |= unix.O_CREAT | unix.O_EXCL
		how.Mode = 0o600 // until Commit: root's, no one else's
	}
	fd, err := unix.Openat2(dir, s.name, how)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(filepath.Dir(h.Path), s.name), Err: err}
	}
	f := os.NewFile(uintptr(fd), h.Path)
	if create {
		a.staged[h.Path] = s
		a.order = append(a.order, s)
	}
	s.h = *h
	if err := f.Truncate(h.Size); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate %s: %w", h.Path, err)
	}
	return f, nil
}

// Commit puts every staged file in its place, with the source's owner,
// mode and times, and gives the directories made theirs. After it,
// Discard leaves the files.
func (a *Applier) Commit() error {
	a.done = true
	for _, s := range a.order {
		if err := s.commit(); err != nil {
			return err
		}
	}
	for i := len(a.dirs) - 1; i >= 0; i-- {
		if err := a.dirs[i].commitDir(); err != nil {
			return err
		}
	}
	return nil
}

func (s *staged) commit() error {
	dir, name, err := s.at()
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(s.path), Err: err}
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, s.name, &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: beneath})
	if err != nil {
		return &os.PathError{Op: "open", Path: s.path, Err: err}
	}
	defer unix.Close(fd)
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
	if err := unix.Renameat(dir, s.name, dir, name); err != nil {
		return &os.PathError{Op: "rename", Path: s.path, Err: err}
	}
	return nil
}

func (e *entry) commitDir() error {
	dir, name, err := e.at()
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(e.path), Err: err}
	}
	defer unix.Close(dir)
	if err := unix.Fchownat(dir, name, int(e.h.UID), int(e.h.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "chown", Path: e.path, Err: err}
	}
	if err := unix.Fchmodat(dir, name, e.h.Mode&0o7777, 0); err != nil {
		return &os.PathError{Op: "chmod", Path: e.path, Err: err}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.h.Atime), unix.NsecToTimespec(e.h.Mtime)}
	if err := unix.UtimesNanoAt(dir, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: e.path, Err: err}
	}
	return nil
}

// Discard removes what was written, unless Commit ran. Before Close.
func (a *Applier) Discard() {
	if a.done {
		return
	}
	for _, s := range a.order {
		if dir, _, err := s.at(); err == nil {
			unix.Unlinkat(dir, s.name, 0)
			unix.Close(dir)
		}
	}
	for i := len(a.dirs) - 1; i >= 0; i-- {
		if dir, name, err := a.dirs[i].at(); err == nil {
			unix.Unlinkat(dir, name, unix.AT_REMOVEDIR) // only if empty
			unix.Close(dir)
		}
	}
}

// Close releases the roots' directories.
func (a *Applier) Close() error {
	for k, fd := range a.bases {
		unix.Close(fd)
		delete(a.bases, k)
	}
	return nil
}
