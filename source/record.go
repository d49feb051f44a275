package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/transport"
)

// A migrate killed in the middle of a migration (SIGKILL, a crash, the
// machine's OOM killer) cannot undo what it did: its network lock stays
// (the next migrate removes it, see netlock.CleanStale), and the original,
// let go by the kernel, runs on with its TCP connections in repair mode,
// silent. Whether it should run at all depends on what the target did, which
// only the target can say. So each migration, from the freeze to its end,
// leaves a record under RecordDir; the next migrate finds the records of
// dead migrations and says what to do (`migrate recover`, which asks the
// target, then kills the original or gives it its connections back).

// RecordDir holds the records of migrations in progress.
var RecordDir = "/run/migrate"

// Record is a migration in progress, as its record says.
type Record struct {
	PID        int       `json:"pid"`
	PIDStart   uint64    `json:"pid_start"` // start time of the process, in ticks
	Owner      int       `json:"owner"`     // the migrate process
	OwnerStart uint64    `json:"owner_start"`
	Session    string    `json:"session"`
	Target     string    `json:"target"`
	Frozen     time.Time `json:"frozen"`
	// PIDNS is the PID namespace the PIDs are of (readlink
	// /proc/self/ns/pid of the migrate that wrote it): a migrate in
	// another one reads other processes under those numbers, and leaves
	// the record alone.
	PIDNS string `json:"pid_ns,omitempty"`
	// Tree are the other processes of the tree migrated with PID, parents
	// first: `migrate recover` settles them with it.
	Tree []RecordedProcess `json:"tree,omitempty"`
	// Shm are the System V segments the tree attaches, which the target
	// created: once it runs the tree, `migrate recover` removes them
	// here, as the commit does.
	Shm []RecordedSegment `json:"shm,omitempty"`
}

// RecordedSegment is a System V segment of a migrated tree: its ID, and
// what tells it from another segment that took the ID since.
type RecordedSegment struct {
	ID    int   `json:"id"`
	Key   int32 `json:"key"`
	CPID  int32 `json:"cpid"`
	Ctime int64 `json:"ctime"`
}

// RecordedProcess is a process of a migrated tree, as its record names
// it.
type RecordedProcess struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // start time, in ticks
}

// maxRecordedTree caps the processes of a record's tree.
const maxRecordedTree = 4096

// pidNS is this process's PID namespace, as /proc/self/ns/pid names it.
func pidNS() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// foreign says whether r was written in another PID namespace.
func (r *Record) foreign() bool {
	return r.PIDNS != "" && r.PIDNS != pidNS()
}

func recordPath(pid int, session string) string {
	return filepath.Join(RecordDir, fmt.Sprintf("%d-%s.json", pid, session))
}

// writeRecord notes the migration of pid (frozen now), and of the other
// processes of its tree, in RecordDir.
func writeRecord(pid int, session, target string, tree []int, shm []core.ShmSegment) (string, error) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return "", err
	}
	me, err := proc.ReadStat(os.Getpid())
	if err != nil {
		return "", err
	}
	r := Record{PID: pid, PIDStart: st.StartTime, Owner: os.Getpid(), OwnerStart: me.StartTime,
		Session: session, Target: target, Frozen: time.Now().UTC(), PIDNS: pidNS()}
	for _, m := range tree {
		if st, err := proc.ReadStat(m); err == nil {
			r.Tree = append(r.Tree, RecordedProcess{PID: m, Start: st.StartTime})
		}
	}
	for _, s := range shm {
		r.Shm = append(r.Shm, RecordedSegment{ID: s.ID, Key: s.Key, CPID: s.CPID, Ctime: s.Ctime})
	}
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(RecordDir, 0o700); err != nil {
		return "", err
	}
	path := recordPath(pid, session)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// StaleRecords returns the records of migrations whose migrate is gone, of
// originals that still run, and removes the records of those gone too.
func StaleRecords() ([]Record, error) {
	ents, err := os.ReadDir(RecordDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(RecordDir, e.Name())
		r, err := readRecord(path)
		if err != nil {
			if errors.Is(err, errNotRecord) {
				os.Remove(path) // not ours to understand: not a record
			}
			continue
		}
		if e.Name() != filepath.Base(recordPath(r.PID, r.Session)) {
			os.Remove(path) // a record under another's name
			continue
		}
		if r.foreign() {
			continue // its PIDs are not this namespace's
		}
		if running(r.Owner, r.OwnerStart) {
			continue // that migration is still under way
		}
		if !running(r.PID, r.PIDStart) {
			os.Remove(path) // the original is gone: nothing left to settle
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// maxRecordSize caps a record file; a real one is about 250 bytes, and
// 40 more for each process of a tree.
const maxRecordSize = 4096 + maxRecordedTree*64

// errNotRecord marks a file of RecordDir that is not a record.
var errNotRecord = errors.New("not a migration record")

// readRecord reads the record at path (readRecordFile), decoded by
// decodeRecord.
func readRecord(path string) (Record, error) {
	b, err := readRecordFile(path, maxRecordSize)
	if err != nil {
		return Record{}, err
	}
	r, err := decodeRecord(b)
	if err != nil {
		return Record{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// decodeStrict decodes a file of RecordDir of at most max bytes into v:
// one JSON object of known keys only, nothing after it.
func decodeStrict(b []byte, max int, v any) error {
	if len(b) > max {
		return fmt.Errorf("%w: larger than %d bytes", errNotRecord, max)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errNotRecord, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the object", errNotRecord)
	}
	return nil
}

// readRecordFile reads a file of RecordDir: a regular file (a symlink,
// FIFO or device there is not opened, not waited on) of at most max
// bytes (one more is read, for the decoder to refuse).
func readRecordFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s: %w: a symbolic link", path, errNotRecord)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, errNotRecord)
	}
	return io.ReadAll(io.LimitReader(f, max+1))
}

// decodeRecord decodes and checks a record: known keys only, nothing after
// the object, PIDs in range, a session ID, and a target address with no
// space or control character (it is printed in a command to run).
func decodeRecord(b []byte) (Record, error) {
	var r Record
	if err := decodeStrict(b, maxRecordSize, &r); err != nil {
		return r, err
	}
	if r.PID <= 0 || r.PID > core.MaxPID || r.Owner <= 0 || r.Owner > core.MaxPID {
		return r, fmt.Errorf("%w: pid %d, owner %d", errNotRecord, r.PID, r.Owner)
	}
	if !transport.ValidSessionID(r.Session) {
		return r, fmt.Errorf("%w: session %q", errNotRecord, r.Session)
	}
	if len(r.Tree) > maxRecordedTree {
		return r, fmt.Errorf("%w: %d processes in the tree", errNotRecord, len(r.Tree))
	}
	for _, m := range r.Tree {
		if m.PID <= 0 || m.PID > core.MaxPID || m.PID == r.PID {
			return r, fmt.Errorf("%w: tree process %d", errNotRecord, m.PID)
		}
	}
	if len(r.Shm) > maxRecordedTree {
		return r, fmt.Errorf("%w: %d System V segments", errNotRecord, len(r.Shm))
	}
	for _, s := range r.Shm {
		if s.ID < 0 {
			return r, fmt.Errorf("%w: System V segment %d", errNotRecord, s.ID)
		}
	}
	if r.Target == "" || len(r.Target) > 512 || strings.IndexFunc(r.Target, func(c rune) bool { return c <= ' ' || c == 0x7f || !unicode.IsPrint(c) }) >= 0 {
		return r, fmt.Errorf("%w: target %q", errNotRecord, r.Target)
	}
	return r, nil
}

// running says whether process pid with that start time still exists (and
// is not a zombie).
func running(pid int, start uint64) bool {
	st, err := proc.ReadStat(pid)
	return err == nil && st.StartTime == start && st.State != 'Z' && st.State != 'X'
}

// RemoveRecord forgets the migration of pid in session.
func RemoveRecord(pid int, session string) {
	os.Remove(recordPath(pid, session))
}

// WarnStale logs, for each migration whose migrate died, what to do
// (and thaws a cgroup it left frozen: ThawStale).
func WarnStale(log *slog.Logger) {
	ThawStale(log)
	rs, err := StaleRecords()
	if err != nil {
		log.Debug("records of migrations not read", "dir", RecordDir, "err", err)
		return
	}
	for _, r := range rs {
		log.Warn(fmt.Sprintf("a migrate (pid %d) died migrating process %d to %s: the original may run with its TCP connections silent, or run twice; settle it with: migrate recover --to %s --session %s %d",
			r.Owner, r.PID, r.Target, r.Target, r.Session, r.PID),
			"pid", r.PID, "session", r.Session, "target", r.Target, "frozen", r.Frozen)
	}
}

// NotRecordedError is why `migrate recover` refuses to act on a process:
// no record of a migration names it, or the process with that PID is not
// the one the record names.
type NotRecordedError struct {
	PID     int
	Session string
	Reason  string
}

func (e *NotRecordedError) Error() string {
	return fmt.Sprintf("refusing to settle process %d for session %s: %s", e.PID, e.Session, e.Reason)
}

// recordedProcess returns the record of the migration of pid in session,
// and fails with a *NotRecordedError unless it exists and pid is still the
// process it names (same start time: a PID can be reused).
func recordedProcess(pid int, session string) (*Record, error) {
	refuse := func(format string, args ...any) (*Record, error) {
		return nil, &NotRecordedError{PID: pid, Session: session, Reason: fmt.Sprintf(format, args...)}
	}
	if !transport.ValidSessionID(session) {
		return refuse("not a session ID")
	}
	path := recordPath(pid, session)
	r, err := readRecord(path)
	if errors.Is(err, fs.ErrNotExist) {
		return refuse("no migration of it in that session is recorded (%s): recover acts only on a process a migration left stopped", path)
	}
	if errors.Is(err, errNotRecord) {
		return refuse("its record %s is unreadable: %v", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("record of the migration: %w", err)
	}
	if r.PID != pid || r.Session != session {
		return refuse("its record %s names process %d in session %s", path, r.PID, r.Session)
	}
	if r.foreign() {
		return refuse("its record %s was written in PID namespace %s, this is %s: run recover there", path, r.PIDNS, pidNS())
	}
	st, err := proc.ReadStat(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return refuse("no such process")
	}
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if st.StartTime != r.PIDStart {
		return refuse("it started at tick %d, the migrated process at tick %d: another process has its PID now", st.StartTime, r.PIDStart)
	}
	return &r, nil
}

// treeRecords are records of the processes of r's tree but its root, each
// as if it were the root of r (for signalRecorded), parents first.
func treeRecords(r *Record) []*Record {
	var out []*Record
	for _, m := range r.Tree {
		c := *r
		c.PID, c.PIDStart, c.Tree = m.PID, m.Start, nil
		out = append(out, &c)
	}
	return out
}

// signalRecorded sends sig to the process r names, through a pidfd opened
// after checking, once more, that the PID still names that process (the
// pidfd then holds on to it: the signal cannot reach a successor).
func signalRecorded(r *Record, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(r.PID, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", r.PID, err)
	}
	defer unix.Close(fd)
	if !running(r.PID, r.PIDStart) {
		return &NotRecordedError{PID: r.PID, Session: r.Session, Reason: "the migrated process is gone, and its PID names another"}
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal %v to %d: %w", sig, r.PID, err)
	}
	return nil
}
