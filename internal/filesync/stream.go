package filesync

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/procmig/migrate/core"
)

// Magic begins a sync stream.
const Magic = "MGSYNC1\n"

// Limits of the sync stream.
const (
	BlockSize = 64 << 10 // the unit compared and sent
	MaxHeader = 8 << 10  // a file record's JSON
	MaxRecord = 8 + BlockSize
	MaxFile   = 1 << 40 // a file's size
)

// Record types.
const (
	recFile  = 1
	recBlock = 2
	recRound = 3
	recEnd   = 4
)

// Header describes a file or directory of a synced tree, as the source has
// it (a file record).
type Header struct {
	Path  string `json:"path"`
	Mode  uint32 `json:"mode"` // type and permission bits, as stat's st_mode
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
	Size  int64  `json:"size"`
	Atime int64  `json:"atime_ns"`
	Mtime int64  `json:"mtime_ns"`
}

// Dir says whether h is a directory (else a regular file).
func (h *Header) Dir() bool { return h.Mode&0o170000 == 0o040000 }

// ErrStream: a sync stream that does not decode, breaks a limit, or names
// a path outside its roots. The error wrapping it says which.
var ErrStream = errors.New("filesync: bad sync stream")

func streamErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrStream, fmt.Sprintf(format, args...))
}

// Record is one decoded record of a sync stream.
type Record struct {
	Header  *Header // a file record
	Off     int64   // a block record: where Data goes
	Data    []byte  // a block record (valid until the next Next)
	Round   uint32  // a round record's number
	IsRound bool    // a round record
	End     bool    // the end record
}

// Reader decodes a sync stream, checking every record against roots.
type Reader struct {
	r     *bufio.Reader
	roots []string
	magic bool
	file  *Header // the file the block records are for
	buf   []byte
	ended bool
}

// NewReader reads a sync stream from r whose paths must lie under roots
// (as CheckRoots returned them).
func NewReader(r io.Reader, roots []string) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 2*MaxRecord), roots: roots, buf: make([]byte, MaxRecord)}
}

// Next returns the next record; io.EOF only after the end record.
func (r *Reader) Next() (*Record, error) {
	if r.ended {
		return nil, io.EOF
	}
	if !r.magic {
		var m [len(Magic)]byte
		if _, err := io.ReadFull(r.r, m[:]); err != nil {
			return nil, streamErr("magic: %v", err)
		}
		if string(m[:]) != Magic {
			return nil, streamErr("bad magic %q", m[:])
		}
		r.magic = true
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return nil, streamErr("record header: %v (no end record)", err)
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > MaxRecord {
		return nil, streamErr("record of %d bytes, at most %d", n, MaxRecord)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, streamErr("record of %d bytes: %v", n, err)
	}
	switch hdr[0] {
	case recFile:
		if n > MaxHeader {
			return nil, streamErr("file record of %d bytes, at most %d", n, MaxHeader)
		}
		h := new(Header)
		if err := json.Unmarshal(b, h); err != nil {
			return nil, streamErr("file record: %v", err)
		}
		if err := r.checkHeader(h); err != nil {
			return nil, err
		}
		r.file = h
		return &Record{Header: h}, nil
	case recBlock:
		if r.file == nil || r.file.Dir() {
			return nil, streamErr("a block record outside a file")
		}
		if n <= 8 || n > 8+BlockSize {
			return nil, streamErr("block record of %d bytes", n)
		}
		off := binary.LittleEndian.Uint64(b)
		if off > uint64(r.file.Size) || uint64(r.file.Size)-off < uint64(n-8) {
			return nil, streamErr("%s: block at %d of %d bytes beyond its size %d", r.file.Path, off, n-8, r.file.Size)
		}
		return &Record{Off: int64(off), Data: b[8:]}, nil
	case recRound:
		if n != 4 {
			return nil, streamErr("round record of %d bytes", n)
		}
		r.file = nil
		return &Record{Round: binary.LittleEndian.Uint32(b), IsRound: true}, nil
	case recEnd:
		if n != 0 {
			return nil, streamErr("end record of %d bytes", n)
		}
		r.file, r.ended = nil, true
		return &Record{End: true}, nil
	}
	return nil, streamErr("unknown record type %d", hdr[0])
}

// checkHeader checks a file record: its path under a root, its type, its
// size.
func (r *Reader) checkHeader(h *Header) error {
	if err := core.ValidPath(h.Path); err != nil {
		return streamErr("file record: %v", err)
	}
	if Under(h.Path, r.roots) == "" {
		return streamErr("%s is under none of the synced paths %v", h.Path, r.roots)
	}
	switch h.Mode & 0o170000 {
	case 0o100000:
		if h.Size < 0 || h.Size > MaxFile {
			return streamErr("%s: size %d", h.Path, h.Size)
		}
	case 0o040000:
		h.Size = 0
	default:
		return streamErr("%s: mode %#o is neither a regular file nor a directory", h.Path, h.Mode)
	}
	return nil
}

// Under returns the root of roots that path is, or lies under; "" if
// none.
func Under(path string, roots []string) string {
	for _, root := range roots {
		if path == root || strings.HasPrefix(path, root+"/") || root == "/" {
			return root
		}
	}
	return ""
}

// CheckRoots checks the synced paths a peer declared: absolute, clean, at
// most MaxRoots.
func CheckRoots(roots []string) error {
	if len(roots) > MaxRoots {
		return fmt.Errorf("%w: %d synced paths, at most %d", ErrStream, len(roots), MaxRoots)
	}
	for _, root := range roots {
		if err := core.ValidPath(root); err != nil {
			return fmt.Errorf("%w: synced path: %w", ErrStream, err)
		}
		if root == "/" {
			return fmt.Errorf("%w: synced path /: name the directories to copy", ErrStream)
		}
	}
	return nil
}

// MaxRoots caps the paths synced (`--sync`, repeated).
const MaxRoots = 64

// writer encodes a sync stream.
type writer struct {
	w     *bufio.Writer
	magic bool
	n     int64 // bytes written
}

func (w *writer) record(typ byte, parts ...[]byte) error {
	if !w.magic {
		if _, err := w.w.WriteString(Magic); err != nil {
			return err
		}
		w.magic = true
		w.n += int64(len(Magic))
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.LittleEndian.PutUint32(hdr[1:], uint32(n))
	if _, err := w.w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.w.Write(p); err != nil {
			return err
		}
	}
	w.n += int64(len(hdr) + n)
	return nil
}

func (w *writer) header(h *Header) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(b) > MaxHeader {
		return fmt.Errorf("%s: file record of %d bytes, at most %d", h.Path, len(b), MaxHeader)
	}
	return w.record(recFile, b)
}

func (w *writer) block(off int64, data []byte) error {
	var o [8]byte
	binary.LittleEndian.PutUint64(o[:], uint64(off))
	return w.record(recBlock, o[:], data)
}

func (w *writer) round(n uint32, end bool) error {
	var err error
	if end {
		err = w.record(recEnd)
	} else {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], n)
		err = w.record(recRound, b[:])
	}
	if err != nil {
		return err
	}
	return w.w.Flush()
}
