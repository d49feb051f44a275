package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// The freeze stops every thread of the tree with ptrace (PTRACE_SEIZE,
// then PTRACE_INTERRUPT, thread after thread: freezeTree). Between the
// stop of the first thread and that of the last, the others run: a
// process may fork (its child is found on the next pass) or exit.
//
// A tree alone in a cgroup v2 of its own (a container: every process of
// the cgroup and of the cgroups below it is of the tree) is stopped at
// once first, by the cgroup freezer: cgroup.freeze is set to 1, and once
// cgroup.events says "frozen 1" no process of it runs, forks or exits;
// each thread is then seized and interrupted as without it (on this
// kernel a frozen thread leaves the freezer's stop for the ptrace stop
// at PTRACE_INTERRUPT, which wait4 reports), and cgroup.freeze is set to
// 0 again: the cgroup is frozen only for the seize, and the processes
// stay stopped by ptrace. A frozen cgroup outlives a migrate that dies
// (a ptrace stop does not), so every way out of the seize thaws it (a
// defer: an error, a panic, the context ended, which SIGINT and SIGTERM
// end in the CLI), and a file under RecordDir/frozen names it while it
// is frozen: the next migrate (ThawStale) thaws a cgroup whose migrate
// died with it frozen.
//
// A tree that shares its cgroup with another process, a cgroup v1
// hierarchy only, a cgroup without cgroup.freeze, the root cgroup,
// migrate's own cgroup or one above it, a cgroup already frozen: ptrace
// only, as the log says.

// FreezeMode says how a dump or a live migration stops the processes
// (DumpOptions.Freeze, MigrateOptions.Freeze; --freeze).
type FreezeMode string

const (
	// FreezeAuto (also ""): the cgroup freezer, then ptrace, where the
	// tree is alone in its cgroup v2; ptrace only elsewhere.
	FreezeAuto FreezeMode = "auto"
	// FreezePtrace: ptrace only.
	FreezePtrace FreezeMode = "ptrace"
	// FreezeCgroup: the cgroup freezer, then ptrace; refused
	// (*FreezerError) where the freezer cannot be used.
	FreezeCgroup FreezeMode = "cgroup"
)

// ParseFreezeMode parses a --freeze value ("" is FreezeAuto).
func ParseFreezeMode(s string) (FreezeMode, error) {
	switch m := FreezeMode(s); m {
	case "", FreezeAuto:
		return FreezeAuto, nil
	case FreezePtrace, FreezeCgroup:
		return m, nil
	}
	return "", fmt.Errorf("freeze mode %q: want auto, ptrace or cgroup", s)
}

// FreezerError says why the cgroup freezer could not stop the tree of
// PID, which FreezeCgroup asked for.
type FreezerError struct {
	PID    int
	Reason string
	Err    error // what could not be read, if that is the reason
}

func (e *FreezerError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("process %d: the cgroup freezer cannot be used: %v", e.PID, e.Err)
	}
	return fmt.Sprintf("process %d: the cgroup freezer cannot be used: %s", e.PID, e.Reason)
}

func (e *FreezerError) Unwrap() error { return e.Err }

// freezeTimeout bounds the wait for a cgroup to be frozen (normally well
// under a millisecond; a task in an uninterruptible sleep delays it): it
// is then thawed and the tree stopped by ptrace only. A variable: tests
// make it run out.
var freezeTimeout = 100 * time.Millisecond

// spinReads is how many times cgroup.events is read at once after the
// freeze is asked, before polling.
const spinReads = 200

// Bounds of the walk of a cgroup and the cgroups below it.
const (
	maxFreezerCgroups = 1024
	maxFreezerProcs   = 1 << 16
)

// cgroupFreezer is the cgroup v2 freezer of a tree alone in its cgroup.
type cgroupFreezer struct {
	path   string // the cgroup, from the hierarchy's root (as /proc shows it)
	dir    string // where cgroup2 is mounted
	rel    string // the cgroup's directory below dir
	root   int
	tree   bool
	log    *slog.Logger
	freeze *os.File // cgroup.freeze
	events *os.File // cgroup.events
	// members are the processes of the cgroup and of those below it
	// when it was checked.
	members map[int]bool
	// record names the cgroup under RecordDir/frozen from the check
	// (out of the frozen window) to close.
	record string
	frozen bool
	stuck  bool // a thaw failed
}

// close closes the files of the freezer (thawed first), and removes its
// record unless the cgroup could not be thawed.
func (f *cgroupFreezer) close() {
	if f == nil {
		return
	}
	f.thaw()
	if f.record != "" && !f.stuck {
		os.Remove(f.record)
		f.record = ""
	}
	f.freeze.Close()
	f.events.Close()
}

// cgroupFreezerFor returns the freezer of the cgroup v2 of process root
// if the tree of root (with tree; else root alone) is alone in it,
// or why not (reason, with a nil freezer). err is for what could not be
// read.
func cgroupFreezerFor(root int, tree bool, log *slog.Logger) (_ *cgroupFreezer, reason string, err error) {
	cgs, err := proc.ReadCgroups(root, root)
	if err != nil {
		return nil, "", fmt.Errorf("process %d: cgroups: %w", root, err)
	}
	path := ""
	for _, c := range cgs {
		if c.Controllers == "" {
			path = c.Path
		}
	}
	if path == "" {
		return nil, "the process is in no cgroup v2 hierarchy (cgroup v1 only)", nil
	}
	if path == "/" {
		return nil, "the process is in the root cgroup v2, which cannot be frozen", nil
	}
	own, err := proc.ReadCgroups(os.Getpid(), os.Getpid())
	if err != nil {
		return nil, "", fmt.Errorf("migrate's cgroups: %w", err)
	}
	for _, c := range own {
		if c.Controllers == "" && (c.Path == path || strings.HasPrefix(c.Path, strings.TrimSuffix(path, "/")+"/")) {
			return nil, fmt.Sprintf("migrate itself runs in cgroup %s, in %s", c.Path, path), nil
		}
	}
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		return nil, "", fmt.Errorf("cgroup mounts: %w", err)
	}
	m, rel, ok := proc.CgroupMountFor(mounts, "", path)
	if !ok {
		return nil, fmt.Sprintf("cgroup2 is not mounted here with %s in it", path), nil
	}
	f := &cgroupFreezer{path: path, dir: m.Dir, rel: rel, root: root, tree: tree, log: log}
	if f.freeze, err = proc.OpenBeneath(m.Dir, rel+"/cgroup.freeze", unix.O_RDWR); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Sprintf("cgroup %s has no cgroup.freeze (a kernel before 5.2)", path), nil
		}
		return nil, "", fmt.Errorf("cgroup %s: %w", path, err)
	}
	ok = false
	defer func() {
		if !ok {
			f.freeze.Close()
			if f.events != nil {
				f.events.Close()
			}
		}
	}()
	if f.events, err = proc.OpenBeneath(m.Dir, rel+"/cgroup.events", unix.O_RDONLY); err != nil {
		return nil, "", fmt.Errorf("cgroup %s: %w", path, err)
	}
	if v, err := readAt(f.freeze); err != nil {
		return nil, "", fmt.Errorf("cgroup %s: cgroup.freeze: %w", path, err)
	} else if strings.TrimSpace(v) != "0" {
		return nil, fmt.Sprintf("cgroup %s is frozen already (cgroup.freeze %s): left as it is", path, strings.TrimSpace(v)), nil
	}
	if frozen, err := f.isFrozen(); err != nil {
		return nil, "", err
	} else if frozen {
		return nil, fmt.Sprintf("cgroup %s is frozen already (a cgroup above it is)", path), nil
	}
	if f.members, err = f.procs(); err != nil {
		return nil, "", err
	}
	if pid, ok := f.outsider(f.members, nil); ok {
		return nil, fmt.Sprintf("process %d shares cgroup %s with the tree", pid, path), nil
	}
	if f.record = writeFreezerRecord(path); f.record == "" {
		log.Warn("no record of the cgroup to freeze in "+frozenRecordDir()+": if this migrate dies in the frozen window, nothing will thaw it", "cgroup", path)
	}
	ok = true
	return f, "", nil
}

// readAt reads a small cgroup file from its start.
func readAt(f *os.File) (string, error) {
	b := make([]byte, 512)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return string(b[:n]), nil
}

// isFrozen says whether cgroup.events says "frozen 1".
func (f *cgroupFreezer) isFrozen() (bool, error) {
	v, err := readAt(f.events)
	if err != nil {
		return false, fmt.Errorf("cgroup %s: cgroup.events: %w", f.path, err)
	}
	for line := range strings.Lines(v) {
		if k, val, ok := strings.Cut(strings.TrimSpace(line), " "); ok && k == "frozen" {
			return val == "1", nil
		}
	}
	return false, fmt.Errorf("cgroup %s: cgroup.events has no frozen key", f.path)
}

// procs lists the processes of the cgroup and of every cgroup below it.
func (f *cgroupFreezer) procs() (map[int]bool, error) { return f.list("cgroup.procs") }

// list lists the IDs that file (cgroup.procs, cgroup.threads) of the
// cgroup and of every cgroup below it names.
func (f *cgroupFreezer) list(file string) (map[int]bool, error) {
	out := map[int]bool{}
	top := filepath.Join(f.dir, f.rel)
	cgroups := 0
	err := filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if p != top && errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		if cgroups++; cgroups > maxFreezerCgroups {
			return fmt.Errorf("more than %d cgroups", maxFreezerCgroups)
		}
		rel, err := filepath.Rel(f.dir, p)
		if err != nil {
			return err
		}
		v, err := proc.ReadCgroupFileLimit(f.dir, rel, file, maxFreezerProcs*8)
		if err != nil {
			if p != top && errors.Is(err, unix.ENOENT) {
				return nil
			}
			return err
		}
		for _, s := range strings.Fields(v) {
			pid, err := strconv.Atoi(s)
			if err != nil || pid <= 0 {
				return fmt.Errorf("%s: %s: %q is not an ID", p, file, s)
			}
			if out[pid] = true; len(out) > maxFreezerProcs {
				return fmt.Errorf("more than %d in %s", maxFreezerProcs, file)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %s: %w", f.path, file, err)
	}
	return out, nil
}

// outsider returns a process of members that is not of the tree (the
// root, or with tree one of its descendants), skipping those of known.
func (f *cgroupFreezer) outsider(members, known map[int]bool) (int, bool) {
	var inTree map[int]bool
	for pid := range members {
		if pid == f.root || known[pid] {
			continue
		}
		if !f.tree {
			return pid, true
		}
		if inTree == nil {
			inTree = map[int]bool{}
			if pids, _, err := walkTree(f.root); err == nil {
				for _, p := range pids {
					inTree[p] = true
				}
			}
		}
		if !inTree[pid] && !descendantOf(pid, f.root) && !gone(pid) {
			return pid, true
		}
	}
	return 0, false
}

// sleeper fails if a thread of the frozen cgroup is in an
// uninterruptible sleep (state D): the cgroup counts it as frozen, but
// PTRACE_INTERRUPT stops it only once it wakes, which may need another
// task of the cgroup to run (a vfork parent waits so for its child, which
// the freezer holds before its exec or exit; glibc's posix_spawn and Go's
// os/exec use vfork): the wait for its stop would never end.
func (f *cgroupFreezer) sleeper() error {
	tids, err := f.list("cgroup.threads")
	if err != nil {
		return err
	}
	for tid := range tids {
		if st, err := proc.ReadStat(tid); err == nil && st.State == 'D' {
			return fmt.Errorf("thread %d (%s) is in an uninterruptible sleep (a vfork parent waiting for its child, or I/O): the freeze would wait on it", tid, st.Comm)
		}
	}
	return nil
}

// gone says whether process pid exited since it was listed (a zombie, or
// no more): it is in no cgroup any more.
func gone(pid int) bool {
	st, err := proc.ReadStat(pid)
	return err != nil || st.State == 'Z' || st.State == 'X'
}

// stop freezes the cgroup and waits until it is frozen (at most
// freezeTimeout, and no longer than ctx), then checks that no process
// of another tree joined it since it was checked. It says whether the
// cgroup is frozen; if not, it is thawed and the log says why.
func (f *cgroupFreezer) stop(ctx context.Context) bool {
	if _, err := f.freeze.WriteAt([]byte("1"), 0); err != nil {
		f.log.Warn("the cgroup freezer failed: the tree is stopped by ptrace only", "cgroup", f.path, "err", err)
		return false
	}
	f.frozen = true
	deadline := time.Now().Add(freezeTimeout)
	for i := 0; ; i++ {
		frozen, err := f.isFrozen()
		if err != nil {
			f.log.Warn("the cgroup freezer failed: the tree is stopped by ptrace only", "cgroup", f.path, "err", err)
			f.thaw()
			return false
		}
		if frozen {
			break
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			f.log.Warn("the cgroup did not freeze in time: the tree is stopped by ptrace only", "cgroup", f.path, "timeout", freezeTimeout, "ctx", ctx.Err())
			f.thaw()
			return false
		}
		if i < spinReads {
			// A cgroup of runnable or sleeping tasks freezes in tens of
			// microseconds: read again soon (the kernel's notice of
			// the change can lag 20 ms behind a previous one).
			runtime.Gosched()
			continue
		}
		// Then wait for kernfs to wake a poller of cgroup.events
		// (POLLPRI), and read it again at least every millisecond
		// (ctx too).
		fds := []unix.PollFd{{Fd: int32(f.events.Fd()), Events: unix.POLLPRI}}
		if _, err := unix.Poll(fds, 1); err != nil && !errors.Is(err, unix.EINTR) {
			f.log.Warn("the cgroup freezer failed: the tree is stopped by ptrace only", "cgroup", f.path, "err", err)
			f.thaw()
			return false
		}
	}
	// Frozen: what is in the cgroup now stays. A process moved into it
	// since the check (by another) would be stopped with the tree.
	members, err := f.procs()
	if err == nil {
		if pid, ok := f.outsider(members, f.members); ok {
			err = fmt.Errorf("process %d joined the cgroup", pid)
		}
	}
	if err == nil {
		err = f.sleeper()
	}
	if err != nil {
		f.log.Warn("the cgroup freezer is not used: the tree is stopped by ptrace only", "cgroup", f.path, "err", err)
		f.thaw()
		return false
	}
	return true
}

// thaw sets cgroup.freeze to 0 again if stop set it. A cgroup it could
// not thaw keeps its record: the next migrate thaws it (ThawStale).
func (f *cgroupFreezer) thaw() {
	if f == nil || !f.frozen {
		return
	}
	if _, err := f.freeze.WriteAt([]byte("0"), 0); err != nil {
		f.log.Error("the cgroup could not be thawed: its processes stay frozen; write 0 to its cgroup.freeze", "cgroup", f.path, "dir", filepath.Join(f.dir, f.rel), "err", err)
		f.stuck = true
		return
	}
	f.frozen, f.stuck = false, false
}

// frozenRecordDir holds a file for each cgroup a migrate froze, while it
// is frozen.
func frozenRecordDir() string { return filepath.Join(RecordDir, "frozen") }

// freezerRecord is a cgroup a migrate froze.
type freezerRecord struct {
	Owner      int    `json:"owner"` // the migrate process
	OwnerStart uint64 `json:"owner_start"`
	// Cgroup is the cgroup v2 path, from the root of CgroupNS.
	Cgroup   string `json:"cgroup"`
	CgroupNS string `json:"cgroup_ns"`
}

// maxFreezerRecord caps a freezer record's size.
const maxFreezerRecord = 8192

// writeFreezerRecord notes that this process freezes cgroup path, and
// returns the file ("" if it could not be written: the log says so).
func writeFreezerRecord(path string) string {
	me, err := proc.ReadStat(os.Getpid())
	if err != nil {
		return ""
	}
	ns, _ := os.Readlink("/proc/self/ns/cgroup")
	b, err := json.Marshal(freezerRecord{Owner: os.Getpid(), OwnerStart: me.StartTime, Cgroup: path, CgroupNS: ns})
	if err != nil {
		return ""
	}
	dir := frozenRecordDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ""
	}
	file := filepath.Join(dir, fmt.Sprintf("%d-%d.json", os.Getpid(), me.StartTime))
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return ""
	}
	return file
}

// decodeFreezerRecord decodes a freezer record: known keys only, a PID in
// range, and a clean absolute cgroup path.
func decodeFreezerRecord(b []byte) (freezerRecord, error) {
	var r freezerRecord
	if err := decodeStrict(b, maxFreezerRecord, &r); err != nil {
		return r, err
	}
	if r.Owner <= 0 || r.Owner > core.MaxPID {
		return r, fmt.Errorf("%w: owner %d", errNotRecord, r.Owner)
	}
	if !filepath.IsAbs(r.Cgroup) || filepath.Clean(r.Cgroup) != r.Cgroup || r.Cgroup == "/" || len(r.Cgroup) > 4096 {
		return r, fmt.Errorf("%w: cgroup %q", errNotRecord, r.Cgroup)
	}
	return r, nil
}

// ThawStale thaws each cgroup that a migrate which died froze (its record
// under RecordDir/frozen, its owner gone) and that is still frozen, and
// removes the records of those settled.
func ThawStale(log *slog.Logger) {
	dir := frozenRecordDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Debug("records of frozen cgroups not read", "dir", dir, "err", err)
		}
		return
	}
	ns, _ := os.Readlink("/proc/self/ns/cgroup")
	var mounts []proc.CgroupMount
	for _, e := range ents {
		file := filepath.Join(dir, e.Name())
		r, err := readFreezerRecord(file)
		if err != nil {
			if errors.Is(err, errNotRecord) {
				os.Remove(file)
			}
			continue
		}
		if r.CgroupNS != ns || running(r.Owner, r.OwnerStart) {
			continue // another namespace's, or its migrate runs
		}
		if mounts == nil {
			if mounts, err = proc.ReadCgroupMounts(); err != nil {
				log.Debug("cgroup mounts not read", "err", err)
				return
			}
		}
		m, rel, ok := proc.CgroupMountFor(mounts, "", r.Cgroup)
		if !ok {
			continue // not mounted here: left for a migrate that sees it
		}
		v, err := proc.ReadCgroupFile(m.Dir, rel, "cgroup.freeze")
		if errors.Is(err, unix.ENOENT) {
			os.Remove(file) // the cgroup is gone
			continue
		}
		if err != nil {
			log.Warn("a cgroup a migrate froze is not read", "cgroup", r.Cgroup, "err", err)
			continue
		}
		if strings.TrimSpace(v) == "1" {
			f, err := proc.OpenBeneath(m.Dir, rel+"/cgroup.freeze", unix.O_WRONLY)
			if err == nil {
				_, err = f.Write([]byte("0"))
				f.Close()
			}
			if err != nil {
				log.Error("a cgroup a dead migrate left frozen could not be thawed: write 0 to its cgroup.freeze", "cgroup", r.Cgroup, "migrate", r.Owner, "err", err)
				continue
			}
			log.Warn("thawed a cgroup that a migrate left frozen when it died", "cgroup", r.Cgroup, "migrate", r.Owner)
		}
		os.Remove(file)
	}
}

// readFreezerRecord reads a freezer record (readRecordFile).
func readFreezerRecord(file string) (freezerRecord, error) {
	b, err := readRecordFile(file, maxFreezerRecord)
	if err != nil {
		return freezerRecord{}, err
	}
	return decodeFreezerRecord(b)
}

// prepareFreezer picks how the tree of root is to be frozen (ss.freezer:
// the cgroup freezer, or nil for ptrace only), before the freeze; with
// FreezeCgroup, a tree that cannot use it is a *FreezerError.
func (ss *session) prepareFreezer(root int) error {
	ss.freezer.close()
	ss.freezer = nil
	mode, err := ParseFreezeMode(string(ss.opts.Freeze))
	if err != nil {
		return err
	}
	if mode == FreezePtrace {
		ss.log.Debug("freeze: ptrace only (--freeze ptrace)")
		return nil
	}
	f, reason, err := cgroupFreezerFor(root, ss.opts.Tree, ss.log)
	if err == nil && f == nil {
		err = &FreezerError{PID: root, Reason: reason}
	}
	if err != nil {
		if mode == FreezeCgroup {
			var fe *FreezerError
			if !errors.As(err, &fe) {
				err = &FreezerError{PID: root, Err: err}
			}
			return err
		}
		ss.log.Info("freeze: ptrace only, not the cgroup freezer", "reason", err)
		return nil
	}
	ss.log.Debug("freeze: the cgroup freezer, then ptrace", "cgroup", f.path)
	ss.freezer = f
	return nil
}
