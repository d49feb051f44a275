package filesync

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// Limits of a Query, checked when it is decoded.
const (
	MaxProbes = 1 << 16 // files in a Query
	// SampleLen is the most of a file the sample hashes.
	SampleLen = 4096
)

// Probe is one file the migrated processes write, as the source sees it.
type Probe struct {
	Path  string `json:"path"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	// SampleLen bytes from the start of the file hash to Sample (hex
	// SHA-256).
	SampleLen int64  `json:"sample_len"`
	Sample    string `json:"sample"`
	// Dir: a directory (a --sync tree's root), compared by inode and
	// time only (SampleLen 0).
	Dir bool `json:"dir,omitempty"`
}

// Query asks the target what it sees at the paths of Files.
type Query struct {
	Files []Probe `json:"files"`
}

// Seen is what the target found at a probe's path.
type Seen struct {
	Exists  bool   `json:"exists"`
	Regular bool   `json:"regular,omitempty"`
	Dir     bool   `json:"dir,omitempty"`
	Ino     uint64 `json:"ino,omitempty"`
	Size    int64  `json:"size,omitempty"`
	Mtime   int64  `json:"mtime_ns,omitempty"`
	// SampleOK: its first SampleLen bytes hash to the probe's Sample
	// (looked at only when the inode numbers agree).
	SampleOK bool `json:"sample_ok,omitempty"`
	// Err says why the path could not be looked at (a symlink on the
	// way, no permission): the file counts as not shared.
	Err string `json:"err,omitempty"`
}

// Reply answers a Query: one Seen for each probe, in order.
type Reply struct {
	Files []Seen `json:"files"`
}

// ErrBadQuery: a Query or Reply that does not decode or breaks a limit.
var ErrBadQuery = errors.New("filesync: bad files query")

// DecodeQuery decodes and checks a Query from the peer.
func DecodeQuery(b []byte) (*Query, error) {
	var q Query
	if err := json.Unmarshal(b, &q); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadQuery, err)
	}
	if len(q.Files) > MaxProbes {
		return nil, fmt.Errorf("%w: %d files, at most %d", ErrBadQuery, len(q.Files), MaxProbes)
	}
	for _, p := range q.Files {
		if err := core.ValidPath(p.Path); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadQuery, err)
		}
		if p.Size < 0 || p.SampleLen < 0 || p.SampleLen > SampleLen || p.SampleLen > p.Size || (p.Dir && p.SampleLen != 0) {
			return nil, fmt.Errorf("%w: %s: size %d, sample of %d bytes", ErrBadQuery, p.Path, p.Size, p.SampleLen)
		}
		if b, err := hex.DecodeString(p.Sample); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: %s: sample %q is not a hex SHA-256", ErrBadQuery, p.Path, clip(p.Sample))
		}
	}
	return &q, nil
}

// DecodeReply decodes the target's Reply to q.
func DecodeReply(b []byte, q *Query) (*Reply, error) {
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: reply: %w", ErrBadQuery, err)
	}
	if len(r.Files) != len(q.Files) {
		return nil, fmt.Errorf("%w: %d answers to %d files", ErrBadQuery, len(r.Files), len(q.Files))
	}
	return &r, nil
}

// Answer looks, on the target, at each path of q. It never writes, and
// follows no symlink.
func Answer(q *Query) *Reply {
	r := &Reply{Files: make([]Seen, len(q.Files))}
	for i, p := range q.Files {
		r.Files[i] = look(p)
	}
	return r
}

func look(p Probe) Seen {
	fd, err := unix.Openat2(unix.AT_FDCWD, p.Path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return Seen{}
	}
	if err != nil {
		return Seen{Err: err.Error()}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Seen{Err: err.Error()}
	}
	s := Seen{Exists: true, Regular: st.Mode&unix.S_IFMT == unix.S_IFREG, Dir: st.Mode&unix.S_IFMT == unix.S_IFDIR,
		Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Nano()}
	if !s.Regular || s.Ino != p.Ino || p.Dir {
		return s
	}
	// The very inode opened above, for reading; its attributes again,
	// as the open revalidated them (a network filesystem's client may
	// have cached older ones).
	f, err := os.Open("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		s.Err = err.Error()
		return s
	}
	defer f.Close()
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Ino == s.Ino {
		s.Size, s.Mtime = st.Size, st.Mtim.Nano()
	}
	sum, err := sample(f, p.SampleLen)
	if err != nil {
		s.Err = err.Error()
		return s
	}
	s.SampleOK = sum == p.Sample
	return s
}

// sample is the hex SHA-256 of the first n bytes of f.
func sample(f *os.File, n int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, n)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// NewProbe describes the regular file or directory f (open for reading)
// for a Query.
func NewProbe(path string, f *os.File) (Probe, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Probe{}, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	p := Probe{Path: path, Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Nano(), SampleLen: min(st.Size, SampleLen)}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		p.Dir, p.Size, p.SampleLen = true, 0, 0
	}
	sum, err := sample(f, p.SampleLen)
	if err != nil {
		return Probe{}, fmt.Errorf("sample of %s: %w", path, err)
	}
	p.Sample = sum
	return p, nil
}

// Shared says whether the target saw the file of probe: the same inode
// number, a size and a modification time between before's and after's
// (the source's looks before the question and after the answer: a file
// written meanwhile grows), and the same first bytes.
func Shared(before, after Probe, s Seen) bool {
	if before.Dir {
		return s.Exists && s.Dir && s.Err == "" && s.Ino == before.Ino && after.Ino == before.Ino &&
			between(before.Mtime, s.Mtime, after.Mtime)
	}
	return s.Exists && s.Regular && s.Err == "" && s.SampleOK &&
		s.Ino == before.Ino && after.Ino == before.Ino &&
		between(before.Size, s.Size, after.Size) && between(before.Mtime, s.Mtime, after.Mtime)
}

func between(a, x, b int64) bool { return min(a, b) <= x && x <= max(a, b) }

// Why says, for an operator, why the file of a probe is not shared.
func Why(p Probe, s Seen) string {
	switch {
	case s.Err != "":
		return "the target cannot look at it: " + s.Err
	case !s.Exists:
		return "the target has no file there"
	case p.Dir && !s.Dir:
		return "the target has something else than a directory there"
	case !p.Dir && !s.Regular:
		return "the target has something else than a regular file there"
	case s.Ino != p.Ino:
		return "the target has another file there (another inode)"
	case !p.Dir && !s.SampleOK:
		return "the target's file has other contents"
	}
	if p.Dir {
		return "the target's directory differs (its time)"
	}
	return fmt.Sprintf("the target's file differs (size %d, source's %d)", s.Size, p.Size)
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
