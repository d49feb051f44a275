package filesync

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Sender sends the synced trees, round after round, on a sync stream.
// Not for concurrent use.
type Sender struct {
	roots []string
	w     *writer
	sent  map[string]*version
	// Skipped are paths of the trees that are neither regular files nor
	// directories (symlinks, sockets, devices): not copied.
	Skipped []string
}

// version is what the target has of a file.
type version struct {
	ino, size, mtime, ctime int64
	mode, uid, gid          uint32
	blocks                  [][sha256.Size]byte
}

// NewSender sends the trees roots (absolute, clean, as CheckRoots wants
// them) on w.
func NewSender(roots []string, w io.Writer) *Sender {
	return &Sender{roots: roots, w: &writer{w: bufio.NewWriterSize(w, 4*MaxRecord)}, sent: map[string]*version{}}
}

// Sent is the number of bytes written to the stream so far.
func (s *Sender) Sent() int64 { return s.w.n }

// Round sends what changed in the trees since the last round (all of them
// at the first), then a round record n, or the end record if last. The
// files are read after they are looked at: a file that changes meanwhile
// is sent again at the next round.
func (s *Sender) Round(n uint32, last bool) error {
	for _, root := range s.roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if path != root && errors.Is(err, fs.ErrNotExist) {
					return nil // removed meanwhile
				}
				return err
			}
			return s.send(path, d)
		})
		if err != nil {
			return fmt.Errorf("sync %s: %w", root, err)
		}
	}
	return s.w.round(n, last)
}

func (s *Sender) send(path string, d fs.DirEntry) error {
	if !d.Type().IsRegular() && !d.IsDir() {
		if _, ok := s.sent[path]; !ok {
			s.sent[path] = &version{}
			s.Skipped = append(s.Skipped, path)
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	h := &Header{Path: path, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Atime: st.Atim.Nano(), Mtime: st.Mtim.Nano()}
	v := &version{ino: int64(st.Ino), size: st.Size, mtime: h.Mtime, ctime: st.Ctim.Nano(), mode: st.Mode, uid: st.Uid, gid: st.Gid}
	old := s.sent[path]
	if h.Dir() {
		if old == nil || old.mode != v.mode || old.uid != v.uid || old.gid != v.gid {
			s.sent[path] = v
			return s.w.header(h)
		}
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // replaced meanwhile by something else
	}
	if old != nil && old.ino == v.ino && old.size == v.size && old.mtime == v.mtime && old.ctime == v.ctime {
		return nil
	}
	h.Size = st.Size
	if err := s.w.header(h); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME, 0)
	if err != nil {
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, BlockSize)
	for off := int64(0); off < st.Size; off += BlockSize {
		n, err := f.ReadAt(buf[:min(BlockSize, st.Size-off)], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if n == 0 {
			// Shorter than it was a moment ago: the next round sends
			// the size it has then.
			break
		}
		sum := sha256.Sum256(buf[:n])
		i := int(off / BlockSize)
		v.blocks = append(v.blocks, sum)
		if old != nil && old.ino == v.ino && i < len(old.blocks) && bytes.Equal(old.blocks[i][:], sum[:]) && n == BlockSize {
			continue
		}
		if err := s.w.block(off, buf[:n]); err != nil {
			return err
		}
		if n < BlockSize && off+int64(n) < st.Size {
			v.ctime = -1 // read short: send it again next round
			break
		}
	}
	s.sent[path] = v
	return nil
}
