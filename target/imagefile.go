package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// openImageFile opens the file name (relative: "pages.img", "files/pipe-3")
// of the image in dir for reading. It follows no symlink on the way (a
// hostile image cannot point a blob at /etc/shadow) nor leaves dir, and
// opens nothing but a regular file: the file is first opened O_PATH, which
// opens no FIFO or device, and reopened for reading only once fstat says it
// is regular. The error is a *core.ImageError naming the file.
func openImageFile(dir, name string) (*os.File, error) {
	path := filepath.Join(dir, name)
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &core.ImageError{File: dir, Reason: "cannot open the image directory", Err: &os.PathError{Op: "open", Path: dir, Err: err}}
	}
	defer unix.Close(dfd)
	pfd, err := unix.Openat2(dfd, name, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		perr := &os.PathError{Op: "open", Path: path, Err: err}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, &core.ImageError{File: path, Reason: "is or goes through a symbolic link", Err: errors.Join(core.ErrNotRegular, perr)}
		}
		return nil, &core.ImageError{File: path, Reason: "cannot open", Err: perr}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, &core.ImageError{File: path, Reason: "cannot stat", Err: &os.PathError{Op: "fstat", Path: path, Err: err}}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &core.ImageError{File: path, Reason: "is a " + fileType(st.Mode), Err: core.ErrNotRegular}
	}
	// Reopening through the O_PATH descriptor opens that same inode.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &core.ImageError{File: path, Reason: "cannot open", Err: &os.PathError{Op: "open", Path: path, Err: err}}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return fmt.Sprintf("file of type %#o", mode&unix.S_IFMT)
}

// openMappable opens (where pr looks paths up) a file of the dumping host that the process maps or
// executes. O_NONBLOCK: a FIFO or device put in its place is not waited
// on; it is refused unless it is a regular file or a character device
// (some devices are mapped).
//
// O_NOATIME where it may (the owner, or CAP_FOWNER): mmap(2) updates the
// access time of the file it maps, and a restore is no access of the
// process's.
func openMappable(pr *pathRoot, path string, flag int) (*os.File, error) {
	f, err := pr.open(path, flag|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOATIME)
	if errors.Is(err, unix.EPERM) {
		f, err = pr.open(path, flag|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if m := fi.Mode(); !m.IsRegular() && m&os.ModeCharDevice == 0 {
		f.Close()
		return nil, &core.ImageError{File: path, Reason: "is a " + core.FileType(m) + ", not a file to map", Err: core.ErrNotRegular}
	}
	return f, nil
}

// blobFile reads one blob of the image, checked against its recorded size
// and SHA-256 as it is read: the error in place of io.EOF is a
// *core.ImageError wrapping core.ErrBlobMismatch.
type blobFile struct {
	f *os.File
	r io.Reader
}

func (b *blobFile) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &core.ImageError{File: b.f.Name(), Reason: "damaged", Err: err}
	}
	return n, err
}

func (b *blobFile) Close() error { return b.f.Close() }

// openBlob opens the blob name of the image in dir, a regular file of the
// size img records for it; reading it to the end checks its hash.
func openBlob(dir string, img *core.Image, name string) (*blobFile, error) {
	path := filepath.Join(dir, name)
	info, ok := img.Blobs[name]
	if !ok || !core.ValidBlobName(name) {
		// Validate refuses such an image; this is the last guard.
		return nil, &core.ImageError{File: path, Reason: "not a file the image lists"}
	}
	f, err := openImageFile(dir, name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, &core.ImageError{File: path, Reason: "cannot stat", Err: err}
	}
	if fi.Size() != info.Size {
		f.Close()
		return nil, &core.ImageError{File: path, Reason: fmt.Sprintf("is %d bytes, the image says %d (truncated or replaced)", fi.Size(), info.Size), Err: core.ErrBlobMismatch}
	}
	return &blobFile{f: f, r: info.Reader(f)}, nil
}

// maxReadBlob caps a blob read whole into memory (pipe buffers and socket
// queues; file contents are copied, not read whole).
const maxReadBlob = 1 << 30

// readBlob reads the whole blob name, checked.
func readBlob(dir string, img *core.Image, name string) ([]byte, error) {
	if info := img.Blobs[name]; info.Size > maxReadBlob {
		return nil, &core.ImageError{File: filepath.Join(dir, name), Reason: fmt.Sprintf("%d bytes, more than the %d a buffer or queue can hold", info.Size, maxReadBlob)}
	}
	b, err := openBlob(dir, img, name)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return io.ReadAll(b)
}

// checkBlob reads the blob name through: it is there, regular, and has the
// recorded size and hash. It stops when ctx is done.
func checkBlob(ctx context.Context, dir string, img *core.Image, name string) error {
	b, err := openBlob(dir, img, name)
	if err != nil {
		return err
	}
	defer b.Close()
	_, err = io.Copy(io.Discard, ctxReader{ctx, b})
	return err
}

// ctxReader is r that fails with ctx's error once ctx is done: a long read
// (a large blob, a page stream) stops on SIGTERM.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
