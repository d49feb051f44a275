package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"migrate/core"
	"migrate/core/proc"
	"migrate/core/ptrace"
	"migrate/pagestream"
)

const pageSize = 4096

// madvise advice that VmFlags show and a restore re-applies.
var vmFlagAdvice = []struct {
	flag   string
	advice int
}{
	{"dc", unix.MADV_DONTFORK},
	{"dd", unix.MADV_DONTDUMP},
	{"hg", unix.MADV_HUGEPAGE},
	{"nh", unix.MADV_NOHUGEPAGE},
	{"wf", unix.MADV_WIPEONFORK},
	{"mg", unix.MADV_MERGEABLE},
}

// collectVMAs reads the memory layout. Page contents are read later.
//
// Preconditions: the process is frozen and no scratch page is mapped.
func (d *dumper) collectVMAs() error {
	maps, err := proc.ReadSmaps(d.pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	for i := range maps {
		m := &maps[i]
		v := core.VMA{Start: m.Start, End: m.End, Prot: m.Prot, Offset: m.Offset}
		if m.Shared {
			v.Flags = unix.MAP_SHARED
		} else {
			v.Flags = unix.MAP_PRIVATE
		}
		if m.HasFlag("gd") {
			v.Flags |= unix.MAP_GROWSDOWN
		}
		for _, a := range vmFlagAdvice {
			if m.HasFlag(a.flag) {
				v.Madvise = append(v.Madvise, a.advice)
			}
		}
		name := m.Path
		switch {
		case name == "[vsyscall]":
			continue // fixed by the kernel, not part of the mm
		case name == "[vdso]":
			v.Kind, v.Name = core.VMAVDSO, name
			buf := make([]byte, v.Len())
			if _, err := ptrace.ReadMemForce(d.pid, v.Start, buf); err != nil {
				return fmt.Errorf("process %d: read [vdso]: %w", d.pid, err)
			}
			sum := sha256.Sum256(buf)
			v.Hash = hex.EncodeToString(sum[:])
		case name == "[vvar]" || name == "[vvar_vclock]":
			v.Kind, v.Name = core.VMAVVar, name
		case strings.HasPrefix(name, "[anon_shmem:"):
			v.Kind, v.Name = core.VMASharedAnon, name
		case name == "" || name == "[heap]" || name == "[stack]" || strings.HasPrefix(name, "[anon:"):
			v.Kind, v.Name = core.VMAAnon, name
			if m.Shared {
				v.Kind = core.VMASharedAnon
			}
		case m.Shared && m.Deleted && (name == "/dev/zero" || strings.HasPrefix(name, "/SYSV")):
			if strings.HasPrefix(name, "/SYSV") {
				return &UnsupportedMappingError{PID: d.pid, Start: m.Start, End: m.End, Name: name + " (System V shared memory)"}
			}
			v.Kind, v.Name = core.VMASharedAnon, name
		case strings.HasPrefix(name, "/"):
			ref, err := fileRef(fmt.Sprintf("/proc/%d/map_files/%x-%x", d.pid, m.Start, m.End))
			if err != nil {
				return fmt.Errorf("process %d: mapping %#x-%#x of %s: %w", d.pid, m.Start, m.End, name, err)
			}
			ref.Path = name
			ref.Deleted = m.Deleted
			v.File = ref
			v.Kind = core.VMAFile
			if m.Shared {
				v.Kind = core.VMASharedFile
			}
		default:
			return &UnsupportedMappingError{PID: d.pid, Start: m.Start, End: m.End, Name: name}
		}
		d.img.Process.VMAs = append(d.img.Process.VMAs, v)
	}
	return nil
}

// run is a range of pages to store.
type run struct{ start, end uint64 }

// pagesToStore returns the runs of pages of v whose contents belong in the
// image: pages never touched are skipped, and so are pages a private file
// mapping still shares with its file.
func pagesToStore(pm *proc.Pagemap, v *core.VMA, buf []proc.PagemapEntry) ([]run, []proc.PagemapEntry, error) {
	switch v.Kind {
	case core.VMAVDSO, core.VMAVVar, core.VMASharedFile:
		return nil, buf, nil
	}
	var runs []run
	const chunk = 1 << 30 // bytes of address space per pagemap read
	for at := v.Start; at < v.End; at += chunk {
		end := min(at+chunk, v.End)
		ents, err := pm.Read(at, end, buf)
		if err != nil {
			return nil, buf, err
		}
		buf = ents
		for i, e := range ents {
			var store bool
			switch v.Kind {
			case core.VMAFile:
				store = e.Swapped() || (e.Present() && !e.FileOrShared())
			default:
				store = e.Present() || e.Swapped()
			}
			if !store {
				continue
			}
			addr := at + uint64(i)*pageSize
			if n := len(runs); n > 0 && runs[n-1].end == addr {
				runs[n-1].end += pageSize
			} else {
				runs = append(runs, run{addr, addr + pageSize})
			}
		}
	}
	return runs, buf, nil
}

// sharedRuns finds the data of a shared anonymous mapping through its
// shmem file (SEEK_DATA/SEEK_HOLE), which also finds pages this process
// has not faulted in.
func sharedRuns(pid int, v *core.VMA) ([]run, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, v.Start, v.End))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []run
	size := int64(v.Len())
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off+int64(v.Offset), unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break
			}
			return nil, err
		}
		data -= int64(v.Offset)
		if data >= size {
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data+int64(v.Offset), unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		hole = min(hole-int64(v.Offset), size)
		s := uint64(data) &^ (pageSize - 1)
		e := (uint64(hole) + pageSize - 1) &^ (pageSize - 1)
		runs = append(runs, run{v.Start + s, v.Start + min(e, uint64(size))})
		off = hole
	}
	return runs, nil
}

// countingWriter counts the bytes on their way to the file. (Frames carry
// their own checksums; hashing the whole file again would cost more than
// writing it.)
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// maxRead is the size of one process_vm_readv.
const maxRead = 1 << 20

// dumpMemory writes the pages of every VMA to the page stream file.
//
// Preconditions: the process is frozen.
func (d *dumper) dumpMemory(ctx context.Context, codec pagestream.Codec) (pagestream.Stats, error) {
	path := filepath.Join(d.dir, core.PagesFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return pagestream.Stats{}, err
	}
	defer f.Close()
	// Frames are large: no buffering, which would only copy them again.
	cw := &countingWriter{w: f}
	w, err := pagestream.NewWriter(cw, pagestream.WriterOptions{Codec: codec})
	if err != nil {
		return pagestream.Stats{}, err
	}
	closed := false
	defer func() {
		if !closed {
			w.Close()
		}
	}()
	pm, err := proc.OpenPagemap(d.pid)
	if err != nil {
		return pagestream.Stats{}, fmt.Errorf("process %d: %w", d.pid, err)
	}
	defer pm.Close()

	var ents []proc.PagemapEntry
	hooked := false
	vmas := d.img.Process.VMAs
	for i := range vmas {
		v := &vmas[i]
		var runs []run
		if v.Kind == core.VMASharedAnon {
			runs, err = sharedRuns(d.pid, v)
		} else {
			runs, ents, err = pagesToStore(pm, v, ents)
		}
		if err != nil {
			return pagestream.Stats{}, fmt.Errorf("process %d: pages of %#x-%#x: %w", d.pid, v.Start, v.End, err)
		}
		readable := v.Prot&unix.PROT_READ != 0
		for _, r := range runs {
			for at := r.start; at < r.end; at += maxRead {
				if err := ctx.Err(); err != nil {
					return pagestream.Stats{}, err
				}
				n := min(r.end-at, maxRead)
				buf := pagestream.GetBuffer(int(n))
				if readable {
					_, err = ptrace.ReadMem(d.pid, at, buf)
				} else {
					_, err = ptrace.ReadMemForce(d.pid, at, buf)
				}
				if err != nil {
					return pagestream.Stats{}, fmt.Errorf("process %d: read %#x-%#x: %w", d.pid, at, at+n, err)
				}
				if err := w.WritePages(0, at, buf); err != nil {
					return pagestream.Stats{}, fmt.Errorf("write %s: %w", path, err)
				}
				v.Pages += n / pageSize
				if !hooked {
					hooked = true
					if err := d.hook(stageMemory); err != nil {
						return pagestream.Stats{}, err
					}
				}
			}
		}
	}
	if err := w.Barrier(0); err != nil {
		return pagestream.Stats{}, fmt.Errorf("write %s: %w", path, err)
	}
	closed = true
	if err := w.Close(); err != nil {
		return pagestream.Stats{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return pagestream.Stats{}, fmt.Errorf("sync %s: %w", path, err)
	}
	st := w.Stats()
	d.img.Pages.Size = cw.n
	d.img.Pages.Pages = st.Pages
	return st, nil
}
