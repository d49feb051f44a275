package source

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
)

// fdOwner reads the owner (F_GETOWN_EX) and the signal (F_GETSIG) of
// signal-driven I/O on the open file description dup, which the
// process's fd shares. The restore sets them again: the owner must be a
// process, thread or process group of the dump (checkFDRefs, once every
// process is read).
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
	if own.PID < 0 || (own.Type != raw.F_OWNER_PID && own.Type != raw.F_OWNER_TID && own.Type != raw.F_OWNER_PGRP) {
		return nil, 0, fmt.Errorf("its signal-driven I/O (F_SETOWN) goes to owner %d of type %d, which migrate does not know", own.PID, own.Type)
	}
	return &core.FDOwner{Type: int(own.Type), PID: int(own.PID)}, sig, nil
}

// checkFDRefs refuses an fd that refers to a process outside the dump: a
// pidfd, or the owner of signal-driven I/O (a process, a thread, or a
// process group that no process of the dump leads). The restore could
// only point it at another process, or none.
func checkFDRefs(all []*dumper) error {
	tids, groups := map[int]bool{}, map[int]bool{}
	for _, d := range all {
		for _, t := range d.proc.Threads {
			tids[t.TID] = true
		}
		if len(d.proc.Threads) == 0 { // a probe: the process runs
			ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", d.pid))
			for _, e := range ents {
				if tid, err := strconv.Atoi(e.Name()); err == nil {
					tids[tid] = true
				}
			}
		}
		pgid := d.proc.PGID
		if pgid == 0 {
			if st, err := proc.ReadStat(d.pid); err == nil {
				pgid = st.PGRP
			}
		}
		if pgid == d.pid {
			groups[pgid] = true
		}
	}
	for _, d := range all {
		for _, f := range d.proc.FDs {
			refuse := func(reason string) error {
				// Kind is what the fd links to, as elsewhere (precheckFDs
				// compares it with the fd's link now).
				kind, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", d.pid, f.FD))
				if err != nil {
					kind = f.Kind
				}
				return &UnsupportedFDError{PID: d.pid, FD: f.FD, Kind: kind, Reason: reason}
			}
			if f.Kind == core.FDPidfd && !tids[f.PidfdPID] {
				return refuse(fmt.Sprintf("a pidfd of process %d, which is not in the dump", f.PidfdPID))
			}
			if o := f.Owner; o != nil {
				switch {
				case o.Type == raw.F_OWNER_PGRP && !groups[o.PID]:
					return refuse(fmt.Sprintf("its signal-driven I/O (F_SETOWN) goes to process group %d, which no process of the dump leads", o.PID))
				case o.Type != raw.F_OWNER_PGRP && !tids[o.PID]:
					return refuse(fmt.Sprintf("its signal-driven I/O (F_SETOWN) goes to process %d, which is not in the dump", o.PID))
				}
			}
		}
	}
	return nil
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
