package source

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// fdOwner reads the owner (F_GETOWN_EX) and the signal (F_GETSIG) of
// signal-driven I/O on the open file description dup, which the
// process's fd shares. The restore sets them again, and can for the
// process itself only: an owner that is another process, a thread or a
// process group is an error naming it.
func (d *dumper) fdOwner(dup int) (*core.FDOwner, int, error) {
	sig, err := unix.FcntlInt(uintptr(dup), unix.F_GETSIG, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("F_GETSIG: %w", err)
	}
	var own raw.FOwnerEx
	if err := raw.FcntlOwner(dup, unix.F_GETOWN_EX, &own); err != nil {
		return nil, 0, fmt.Errorf("F_GETOWN_EX: %w", err)
	}
	if own.PID == 0 {
		return nil, sig, nil
	}
	if int(own.PID) != d.pid || (own.Type != raw.F_OWNER_PID && own.Type != raw.F_OWNER_TID) {
		what := map[int32]string{raw.F_OWNER_TID: "thread", raw.F_OWNER_PID: "process", raw.F_OWNER_PGRP: "process group"}[own.Type]
		return nil, 0, fmt.Errorf("its signal-driven I/O (F_SETOWN) goes to %s %d, which migrate restores only for the process itself", what, own.PID)
	}
	return &core.FDOwner{Type: int(own.Type), PID: int(own.PID)}, sig, nil
}

// packetMode says whether a pipe writes packets: an end of it has
// O_DIRECT (pipe2 gives it to the write end).
func packetMode(ends []pipeEnd) bool {
	for _, e := range ends {
		if e.d.proc.FDs[e.idx].Flags&unix.O_DIRECT != 0 {
			return true
		}
	}
	return false
}

// readable returns what to read the contents of the file dup from: a new
// description of it, open for reading (through /proc/self/fd, which opens
// a deleted file too), since the process may hold it open only for
// writing and SEEK_DATA moves the offset of the description it is done
// on. If it cannot be opened again, dup itself is read whole, holes and
// all, as long as its flags (flags) allow reading: seek is then false.
func (s *fdSet) readable(dup *os.File, flags int) (f *os.File, seek bool, err error) {
	path := fmt.Sprintf("/proc/self/fd/%d", dup.Fd())
	// O_NOATIME: reading it for the image is not an access of the process.
	f, err = os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		if flags&unix.O_ACCMODE != unix.O_WRONLY {
			return dup, false, nil
		}
		return nil, false, fmt.Errorf("open a file held write-only for reading its contents: %w", err)
	}
	s.reads = append(s.reads, f)
	return f, true, nil
}

// sparseFile returns the source of the blob of a file's contents that
// keeps its holes: the data extents (SEEK_DATA, SEEK_HOLE) within
// ref.Size, one after the other, noted in ref.Extents unless the data is
// the whole file. A file system without SEEK_DATA has all data, and so
// has f if it may not seek (its offset is the process's).
func sparseFile(f *os.File, ref *core.FileRef, seek bool) func() (io.Reader, error) {
	return func() (io.Reader, error) {
		if !seek {
			ref.Extents = nil
			return io.NewSectionReader(f, 0, ref.Size), nil
		}
		exts, err := dataExtents(int(f.Fd()), ref.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref.Path, err)
		}
		if len(exts) == 1 && exts[0].Off == 0 && exts[0].Len == ref.Size {
			ref.Extents = nil
			return io.NewSectionReader(f, 0, ref.Size), nil
		}
		ref.Extents = exts
		rs := make([]io.Reader, len(exts))
		for i, e := range exts {
			rs[i] = io.NewSectionReader(f, e.Off, e.Len)
		}
		return io.MultiReader(rs...), nil
	}
}

// dataExtents lists the ranges of fd below size that hold data.
func dataExtents(fd int, size int64) ([]core.Extent, error) {
	var out []core.Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // holes to the end
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return []core.Extent{{Off: 0, Len: size}}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		hole = min(hole, size)
		out = append(out, core.Extent{Off: data, Len: hole - data})
		off = hole
	}
	return out, nil
}
