package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/pagestream"
)

const pageSize = 4096

// fillPages reads the page stream and writes every page into the child.
// A frame that fails its checks stops the restore before any of its bytes
// are written.
func (r *restorer) fillPages(ctx context.Context) error {
	begin := time.Now()
	defer func() { r.memTime = time.Since(begin) }()
	path := filepath.Join(r.dir, r.pagesInfo.File)
	f, err := openImageFile(r.dir, r.pagesInfo.File)
	if err != nil {
		return err
	}
	defer f.Close()
	// Frames are large: no bufio, which would only copy them once more.
	// Packed: the stored pages are written from where they were
	// decompressed, with no move to their places (writeFrame).
	rd, err := pagestream.NewReader(f, pagestream.ReaderOptions{Packed: true})
	if err != nil {
		return &core.ImageError{File: path, Reason: "bad page data", Err: err}
	}
	defer rd.Close()
	rounds := max(r.pagesInfo.Rounds, 1)
	final := rounds - 1
	vmas := r.mapped // the layout built so far
	find := func(addr uint64) *core.VMA {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > addr })
		if i < len(vmas) && vmas[i].Start <= addr {
			return &vmas[i]
		}
		return nil
	}
	// Writers: writing into fresh memory is mostly page faults, which run
	// in parallel. Frames of one round may be written in any order; a
	// barrier waits for all of them before the next round's pages.
	type job struct {
		fr   *pagestream.Frame
		skip []bool // zero pages to leave alone: that memory is fresh, so zero
	}
	var (
		jobs chan job
		wg   sync.WaitGroup
		errc = make(chan error, 1)
	)
	start := func() {
		jobs = make(chan job, 2*writers)
		for range writers {
			wg.Add(1)
			go func(jobs <-chan job) {
				defer wg.Done()
				for j := range jobs {
					if err := writeFrame(r.pid, j.fr, j.skip); err != nil {
						select {
						case errc <- err:
						default:
						}
					}
					pagestream.PutBuffer(j.fr.Data)
				}
			}(jobs)
		}
	}
	stop := func() error {
		close(jobs)
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	}
	start()
	for {
		if err := ctx.Err(); err != nil {
			stop()
			return err
		}
		fr, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			stop()
			return &core.ImageError{File: path, Reason: "bad page data", Err: err}
		}
		if fr.Kind != pagestream.FramePages {
			// A barrier: everything before it must land first.
			if err := stop(); err != nil {
				return err
			}
			start()
			continue
		}
		end := fr.Addr + uint64(fr.Pages)*pageSize
		r.pages += uint64(fr.Pages)
		v := find(fr.Addr)
		if v == nil || end > v.End || !holdsPages(v.Kind) || v.Pages == 0 {
			if int(fr.Round) < final {
				// Pre-copy sent these before the layout changed; the final
				// layout has no place for them.
				continue
			}
			stop()
			return &core.ImageError{File: path, Reason: fmt.Sprintf("pages at %#x-%#x lie outside the areas that hold pages", fr.Addr, end)}
		}
		fr.Keep()
		jobs <- job{fr, r.skipZeros(fr, v, rounds > 1)}
		r.filled.Add(uint64(fr.Pages))
	}
	if err := stop(); err != nil {
		return err
	}
	if r.pages != r.pagesInfo.Pages {
		return &core.ImageError{File: path, Reason: fmt.Sprintf("%d pages in the stream, the image says %d", r.pages, r.pagesInfo.Pages)}
	}
	return nil
}

// skipZeros says which pages of frame fr (in area v) need no write: zero
// pages where the memory is fresh (anonymous, never written before), so
// zero already. A private file mapping needs its zero pages written over
// the file's data. With track, the pages written are remembered, for
// frames of later rounds. Memory shared across a tree that comes live
// is never fresh: another process of the tree may have written a page
// that this frame says is zero now.
func (r *restorer) skipZeros(fr *pagestream.Frame, v *core.VMA, track bool) []bool {
	fresh := v.Kind == core.VMAAnon || v.Kind == core.VMASharedAnon && !(r.live && v.Shm != 0 && len(r.img.Tree) > 0)
	skip := make([]bool, fr.Pages)
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	for i := range fr.Pages {
		addr := fr.Addr + uint64(i)*pageSize
		skip[i] = fresh && fr.IsZero(i) && !r.written.Has(addr)
		if !skip[i] && track {
			r.written.Add(addr)
		}
	}
	return skip
}

// writers is the number of goroutines writing pages into the process.
const writers = 2

// writeFrame writes the pages of fr into process pid, but for the pages
// skip says to leave alone, with one process_vm_writev: a remote area per
// run of pages to write, the local pieces where the frame holds them
// (fr.Data whole, or packed: see pagestream.ReaderOptions.Packed) and,
// for zero pages a packed frame does not hold, zeroPages.
func writeFrame(pid int, fr *pagestream.Frame, skip []bool) error {
	packed := len(fr.Data) != fr.Pages*pageSize
	var (
		local  [][]byte
		remote []unix.RemoteIovec
		stored int // stored pages of a packed frame before page i
	)
	// piece adds b to the local pieces, joined with the last one when it
	// follows it in memory.
	piece := func(b []byte) {
		if n := len(local); n > 0 {
			last := local[n-1]
			if cap(last) >= len(last)+len(b) && &last[:len(last)+1][len(last)] == &b[0] {
				local[n-1] = last[:len(last)+len(b)]
				return
			}
		}
		local = append(local, b)
	}
	for i := 0; i < fr.Pages; i++ {
		zero := fr.IsZero(i)
		if skip[i] {
			if !zero {
				stored++
			}
			continue
		}
		addr := uintptr(fr.Addr + uint64(i)*pageSize)
		if n := len(remote); n > 0 && remote[n-1].Base+uintptr(remote[n-1].Len) == addr {
			remote[n-1].Len += pageSize
		} else {
			remote = append(remote, unix.RemoteIovec{Base: addr, Len: pageSize})
		}
		switch {
		case !packed:
			piece(fr.Data[i*pageSize : (i+1)*pageSize])
		case zero:
			// Runs of zero pages from the one source, which is large
			// enough for a frame.
			if n := len(local); n > 0 && &local[n-1][0] == &zeroPages[0] {
				local[n-1] = zeroPages[:len(local[n-1])+pageSize]
			} else {
				local = append(local, zeroPages[:pageSize])
			}
		default:
			piece(fr.Data[stored*pageSize : (stored+1)*pageSize])
			stored++
		}
	}
	return ptrace.WriteMemv(pid, local, remote)
}

// zeroPages is the source of the zero pages a packed frame leaves out
// (never written to).
var zeroPages = make([]byte, pagestream.MaxFramePages*pageSize)

// protect sets each area's final protection and re-applies its madvise
// advice.
//
// Only the areas whose protection is not their final one yet get an
// mprotect: the memory layout, read once, says which (an area mapped
// writable for its pages, or opened for a page of a later round); one
// injected call costs ~20 us, and a PostgreSQL tree has thousands of
// areas of code and read-only data mapped as they will stay.
func (r *restorer) protect(context.Context) error {
	maps, err := proc.ReadMaps(r.pid)
	if err != nil {
		return fmt.Errorf("memory layout: %w", err)
	}
	for _, v := range r.proc.VMAs {
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			continue
		}
		if holdsPages(v.Kind) && !protectedAs(maps, &v) {
			if _, err := r.sys("mprotect", unix.SYS_MPROTECT, v.Start, v.Len(), uint64(v.Prot)); err != nil {
				return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
			}
		}
		for _, a := range v.Madvise {
			if _, err := r.sys("madvise", unix.SYS_MADVISE, v.Start, v.Len(), uint64(a)); err != nil {
				r.warn("area %#x-%#x: madvise(%d): %v", v.Start, v.End, a, err)
			}
		}
		if err := r.lock(&v); err != nil {
			return err
		}
	}
	if p := r.proc.MlockAll; p != 0 {
		// Areas the restore maps from now on are its own, and go.
		if _, err := r.sys("mlockall", unix.SYS_MLOCKALL, uint64(p)); err != nil {
			return fmt.Errorf("mlockall(%#x): %w", p, err)
		}
	}
	return nil
}

// protectedAs says whether the whole of area v is mapped, in maps (sorted),
// with v's protection.
func protectedAs(maps []proc.Mapping, v *core.VMA) bool {
	want := v.Prot & (unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC)
	i := sort.Search(len(maps), func(i int) bool { return maps[i].End > v.Start })
	at := v.Start
	for ; i < len(maps) && at < v.End; i++ {
		m := &maps[i]
		if m.Start > at || m.Prot != want {
			return false
		}
		at = m.End
	}
	return at >= v.End
}

// lock locks the area v in memory as it was (mlock, or mlock2 with
// MLOCK_ONFAULT), now that it has its final protection.
func (r *restorer) lock(v *core.VMA) error {
	var flags uint64
	switch v.Lock {
	case "":
		return nil
	case core.LockOnFault:
		flags = unix.MLOCK_ONFAULT
	}
	_, err := r.sys("mlock2", unix.SYS_MLOCK2, v.Start, v.Len(), flags)
	if errors.Is(err, unix.ENOMEM) && v.Prot == unix.PROT_NONE && flags == 0 {
		// The kernel marks the area locked, then cannot fault in pages
		// of an inaccessible area: the state mlockall(MCL_CURRENT) left
		// the original in (it ignores that error).
		err = nil
	}
	if err != nil {
		return fmt.Errorf("area %#x-%#x: lock in memory (%s): %w", v.Start, v.End, v.Lock, err)
	}
	return nil
}
