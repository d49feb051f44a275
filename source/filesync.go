package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/filesync"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/transport"
)

// Files the processes write. A live migration takes it that the target
// sees the files the processes have open where they are (the nodes of a
// cluster share storage); a file it writes that the target does not see
// would be lost (an append-only log going on in another file, a
// database's pages gone). So before pre-copy the target is asked what it
// sees at the path of each regular file the processes hold open for
// writing or map shared and writable (internal/filesync's probe), and a
// migration with one the target does not share is refused
// (*FilesNotSharedError), unless MigrateOptions.Sync copies it.

// FilesNotSharedError: the processes write files the target does not
// see (no shared storage): it needs shared storage, or the files copied
// with `--sync PATH`.
type FilesNotSharedError struct {
	PID   int // the process migrated (the tree's root)
	Files []NotSharedFile
}

// NotSharedFile is a file a process writes that the target does not share.
type NotSharedFile struct {
	PID  int
	Path string
	Why  string
}

func (e *FilesNotSharedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "process %d writes files the target does not share:", e.PID)
	for i, f := range e.Files {
		if i == 8 {
			fmt.Fprintf(&b, " and %d more", len(e.Files)-i)
			break
		}
		fmt.Fprintf(&b, " %s (process %d: %s);", f.Path, f.PID, f.Why)
	}
	b.WriteString(" moved, it would go on writing files other than its own: shared storage is needed, or --sync PATH to copy them (a file, or a directory holding them)")
	return b.String()
}

// writtenFile is a regular file a process writes, open at link.
type writtenFile struct {
	pid        int
	path, link string
	dev, ino   uint64
	root       bool // a --sync tree, not a file the processes write
}

// pseudoFS are the filesystems whose files are the kernel's, not stored
// data: never asked about.
var pseudoFS = map[int64]bool{
	unix.PROC_SUPER_MAGIC: true, unix.SYSFS_MAGIC: true, unix.CGROUP_SUPER_MAGIC: true, unix.CGROUP2_SUPER_MAGIC: true,
	unix.DEBUGFS_MAGIC: true, unix.TRACEFS_MAGIC: true, unix.SECURITYFS_MAGIC: true, unix.BPF_FS_MAGIC: true,
	unix.PSTOREFS_MAGIC: true, unix.EFIVARFS_MAGIC: true,
}

// writtenFiles lists the regular files pids hold open for writing or map
// shared and writable, once each, but those under sync.
func writtenFiles(pids []int, sync []string) ([]writtenFile, error) {
	var out []writtenFile
	seen := map[[2]uint64]bool{}
	add := func(pid int, path, link string) {
		if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "/memfd:") || strings.HasSuffix(path, " (deleted)") ||
			core.ValidPath(path) != nil || filesync.Under(path, sync) != "" {
			return
		}
		var st unix.Stat_t
		if unix.Stat(link, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink == 0 || seen[[2]uint64{st.Dev, st.Ino}] {
			return
		}
		var fs unix.Statfs_t
		if unix.Statfs(link, &fs) == nil && pseudoFS[int64(fs.Type)] {
			return
		}
		seen[[2]uint64{st.Dev, st.Ino}] = true
		out = append(out, writtenFile{pid: pid, path: path, link: link, dev: st.Dev, ino: st.Ino})
	}
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // it exited: it leaves the tree
		}
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		for _, e := range ents {
			fd, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			link := dir + "/" + e.Name()
			path, err := os.Readlink(link)
			if err != nil || !strings.HasPrefix(path, "/") {
				continue
			}
			info, err := proc.ReadFDInfo(pid, fd)
			if err != nil || info.Flags&unix.O_ACCMODE == unix.O_RDONLY {
				continue
			}
			add(pid, path, link)
		}
		maps, err := proc.ReadMaps(pid)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		for _, m := range maps {
			if m.Shared && m.Prot&unix.PROT_WRITE != 0 && !m.Deleted && m.Inode != 0 {
				add(pid, m.Path, fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
			}
		}
	}
	return out, nil
}

// probe describes the file open at w.link.
func (w writtenFile) probe() (filesync.Probe, error) {
	f, err := os.Open(w.link)
	if err != nil {
		return filesync.Probe{}, err
	}
	defer f.Close()
	return filesync.NewProbe(w.path, f)
}

// fileKey is a file by device and inode.
type fileKey [2]uint64

// checkShared asks the target (on conn, before the migration's Hello)
// whether it
// sees the files the processes pids write, but those under sync, and the
// trees sync: a *FilesNotSharedError names the files it does not see, a
// *SyncSharedError the trees it does. It returns the files it asked
// about (the freeze asks about those written since: recheckShared).
// Processes in a mount namespace of their own (ownNS) name their files
// by paths of that namespace, which the target rebuilds (its tmpfs files
// come with the state, its host mounts must be the target's): their
// files are not asked about.
func checkShared(ctx context.Context, pid int, pids []int, ownNS bool, sync []string, conn handoff.Conn) (map[fileKey]bool, error) {
	var files []writtenFile
	if !ownNS {
		var err error
		if files, err = writtenFiles(pids, sync); err != nil {
			return nil, err
		}
	}
	for _, root := range sync {
		files = append(files, writtenFile{path: root, link: root, root: true})
	}
	asked := map[fileKey]bool{}
	for _, f := range files {
		if !f.root {
			asked[fileKey{f.dev, f.ino}] = true
		}
	}
	return asked, askShared(ctx, pid, files, conn)
}

// recheckShared asks the target about the files the frozen processes of
// img write that checkShared did not ask about (opened for writing
// during pre-copy), but those under sync and those of pseudo
// filesystems.
// Preconditions: the processes are frozen (img is their state).
func recheckShared(ctx context.Context, img *core.Image, asked map[fileKey]bool, sync []string, dial func(context.Context) (handoff.Conn, error)) error {
	var files []writtenFile
	add := func(pid int, ref *core.FileRef, link string) {
		key := fileKey{ref.Dev, ref.Ino}
		if ref.Deleted || asked[key] || !strings.HasPrefix(ref.Path, "/") || strings.HasPrefix(ref.Path, "/memfd:") ||
			core.ValidPath(ref.Path) != nil || filesync.Under(ref.Path, sync) != "" {
			return
		}
		asked[key] = true
		var fs unix.Statfs_t
		if unix.Statfs(link, &fs) == nil && pseudoFS[int64(fs.Type)] {
			return
		}
		files = append(files, writtenFile{pid: pid, path: ref.Path, link: link, dev: ref.Dev, ino: ref.Ino})
	}
	for _, pp := range img.Processes() {
		p := pp.Process
		for _, fd := range p.FDs {
			if fd.Kind == core.FDFile && fd.File != nil && fd.Flags&unix.O_ACCMODE != unix.O_RDONLY {
				add(p.PID, fd.File, fmt.Sprintf("/proc/%d/fd/%d", p.PID, fd.FD))
			}
		}
		for _, v := range p.VMAs {
			if v.File != nil && v.Flags&unix.MAP_SHARED != 0 && v.Prot&unix.PROT_WRITE != 0 {
				add(p.PID, v.File, fmt.Sprintf("/proc/%d/map_files/%x-%x", p.PID, v.Start, v.End))
			}
		}
	}
	if len(files) == 0 {
		return nil
	}
	conn, err := dial(ctx)
	if err != nil {
		return fmt.Errorf("asking the target whether it shares the files opened for writing during pre-copy: %w", err)
	}
	defer conn.Close()
	return askShared(ctx, img.Process.PID, files, conn)
}

// askShared asks the target about files, on conn (before a Hello, or
// on a connection of its own).
func askShared(ctx context.Context, pid int, files []writtenFile, conn handoff.Conn) error {
	if len(files) == 0 {
		return nil
	}
	q := filesync.Query{Files: make([]filesync.Probe, 0, len(files))}
	var asked []writtenFile
	for _, f := range files {
		p, err := f.probe()
		if err != nil {
			if f.root {
				return fmt.Errorf("--sync %s: %w", f.path, err)
			}
			continue // closed meanwhile
		}
		q.Files = append(q.Files, p)
		asked = append(asked, f)
	}
	if len(q.Files) > filesync.MaxProbes {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("it writes %d files, more than the %d a target can be asked about", len(q.Files), filesync.MaxProbes)}
	}
	body, err := json.Marshal(q)
	if err != nil {
		return err
	}
	rb, err := handoff.QueryFiles(ctx, conn, body, 0)
	if err != nil {
		return fmt.Errorf("asking the target whether it shares the files the process writes: %w", err)
	}
	r, err := filesync.DecodeReply(rb, &q)
	if err != nil {
		return err
	}
	nse := &FilesNotSharedError{PID: pid}
	sse := &SyncSharedError{}
	for i, before := range q.Files {
		after, err := asked[i].probe()
		if err != nil {
			after = before // closed meanwhile: judged on the first look
		}
		shared := filesync.Shared(before, after, r.Files[i])
		switch {
		case asked[i].root && shared:
			sse.Paths = append(sse.Paths, before.Path)
		case !asked[i].root && !shared:
			nse.Files = append(nse.Files, NotSharedFile{PID: asked[i].pid, Path: before.Path, Why: filesync.Why(before, r.Files[i])})
		}
	}
	switch {
	case len(sse.Paths) > 0:
		return sse
	case len(nse.Files) > 0:
		return nse
	}
	return nil
}

// SyncSharedError: a tree named with --sync is one the target shares
// (the same directory or file, on shared storage): copying it would
// replace the files under the original's feet. Leave --sync out for it.
type SyncSharedError struct {
	Paths []string
}

func (e *SyncSharedError) Error() string {
	return fmt.Sprintf("--sync %s: the target shares it (the same files, on shared storage): it needs no copy, leave --sync out for it", strings.Join(e.Paths, ", "))
}

// syncRoots checks the paths of MigrateOptions.Sync: absolute, existing,
// a directory or a regular file, with no symlink on the way (the target
// makes them at the same path).
func syncRoots(paths []string) ([]string, error) {
	var roots []string
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return nil, fmt.Errorf("--sync %q: an absolute, clean path other than / is needed", p)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("--sync %s: %w", p, err)
		}
		if real != p {
			return nil, fmt.Errorf("--sync %s: a symlink on the way (it is %s): name the real path", p, real)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, fmt.Errorf("--sync %s: %w", p, err)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("--sync %s: neither a directory nor a regular file", p)
		}
		roots = append(roots, p)
	}
	if err := filesync.CheckRoots(roots); err != nil {
		return nil, err
	}
	return roots, nil
}

// syncOut sends the synced trees to the target, a round at a time, on a
// stream of their own (opened with the first layout, which names roots).
type syncOut struct {
	roots []string
	conn  net.Conn
	s     *filesync.Sender
}

// open opens the stream, under the migration's bandwidth if it has one.
func (o *syncOut) open(sess *transport.Session, budget *rateBudget) error {
	conn, err := sess.OpenStream(transport.KindFiles)
	if err != nil {
		return err
	}
	o.conn = conn
	var w io.Writer = conn
	if budget != nil {
		w = &limitedWriter{w: conn, b: budget}
	}
	o.s = filesync.NewSender(o.roots, w)
	return nil
}

// round sends what changed since the last round; last: the frozen
// window's, the end of the stream.
func (o *syncOut) round(n uint32, last bool) error {
	if o == nil || o.s == nil {
		return nil
	}
	if err := o.s.Round(n, last); err != nil {
		return fmt.Errorf("--sync: %w", err)
	}
	return nil
}

func (o *syncOut) close() {
	if o != nil && o.conn != nil {
		o.conn.Close()
	}
}
