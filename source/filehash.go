package source

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// Files of code (the executable and the files mapped executable) are
// recorded with the SHA-256 of their contents, so that a restore on a host
// where the same files were installed separately (another mtime, another
// inode) takes them, and one where they differ is refused naming the
// file. Hashing a file takes a few milliseconds a MiB: it is done while
// the process runs (prehashCode, before the freeze; a live migration's
// first layout) and remembered by file and version, so that the frozen
// window finds it done.

// maxHashed bounds the size of a file hashed; a larger one is compared by
// size and time only.
const maxHashed = 512 << 20

type hashKey struct {
	dev, ino    uint64
	size, mtime int64
}

var (
	hashMu sync.Mutex
	hashes = map[hashKey]string{}
)

// contentHash returns the hex SHA-256 of the file open at link (a /proc
// link to the very inode), from the cache when that version of the file
// was hashed before.
func contentHash(link string, ref *core.FileRef) (string, error) {
	key := hashKey{ref.Dev, ref.Ino, ref.Size, ref.Mtime}
	hashMu.Lock()
	h, ok := hashes[key]
	hashMu.Unlock()
	if ok {
		return h, nil
	}
	f, err := os.OpenFile(link, os.O_RDONLY|unix.O_NOATIME, 0)
	if err != nil {
		// O_NOATIME needs the file's owner or CAP_FOWNER.
		if f, err = os.Open(link); err != nil {
			return "", err
		}
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", ref.Path, err)
	}
	h = hex.EncodeToString(sum.Sum(nil))
	hashMu.Lock()
	if len(hashes) > 4096 {
		clear(hashes) // a long-lived embedder: keep it bounded
	}
	hashes[key] = h
	hashMu.Unlock()
	return h, nil
}

// hashCode sets SHA256 on ref, read through link, if it is a regular file
// small enough; a file that cannot be read is left to size and time.
func hashCode(link string, ref *core.FileRef) {
	if ref.Deleted || ref.Mode&unix.S_IFMT != unix.S_IFREG || ref.Size > maxHashed {
		return
	}
	if h, err := contentHash(link, ref); err == nil {
		ref.SHA256 = h
	}
}

// hashCodeAreas sets SHA256 on the files of vmas that are mapped
// executable in some area (all their areas: a library's read-only and
// data areas are the same file).
func hashCodeAreas(pid int, vmas []core.VMA) {
	code := map[[2]uint64]bool{}
	for _, v := range vmas {
		if v.File != nil && v.Prot&unix.PROT_EXEC != 0 {
			code[[2]uint64{v.File.Dev, v.File.Ino}] = true
		}
	}
	for i := range vmas {
		v := &vmas[i]
		if v.File != nil && code[[2]uint64{v.File.Dev, v.File.Ino}] {
			hashCode(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, v.Start, v.End), v.File)
		}
	}
}

// prehashCode hashes the code files of a running process (maps, its
// layout), so that the dump, frozen, finds them hashed.
func prehashCode(pid int, maps []proc.Mapping) {
	if ref, err := fileRef(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		hashCode(fmt.Sprintf("/proc/%d/exe", pid), ref)
	}
	for _, m := range maps {
		if m.Prot&unix.PROT_EXEC == 0 || m.Path == "" || m.Path[0] != '/' || m.Deleted {
			continue
		}
		link := fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End)
		if ref, err := fileRef(link); err == nil {
			hashCode(link, ref)
		}
	}
}
