package target

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"migrate/core"
	"migrate/core/ptrace"
	"migrate/pagestream"
)

const pageSize = 4096

// fillPages reads the page stream and writes every page into the child.
// A frame that fails its checks stops the restore before any of its bytes
// are written.
func (r *restorer) fillPages(ctx context.Context) error {
	start := time.Now()
	defer func() { r.memTime = time.Since(start) }()
	path := filepath.Join(r.dir, r.img.Pages.File)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := pagestream.NewReader(bufio.NewReaderSize(f, 4<<20), pagestream.ReaderOptions{})
	if err != nil {
		return &core.ImageError{File: path, Reason: "bad page data", Err: err}
	}
	vmas := r.img.Process.VMAs
	find := func(addr uint64) *core.VMA {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > addr })
		if i < len(vmas) && vmas[i].Start <= addr {
			return &vmas[i]
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		fr, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return &core.ImageError{File: path, Reason: "bad page data", Err: err}
		}
		if fr.Kind != pagestream.FramePages {
			continue
		}
		end := fr.Addr + uint64(fr.Pages)*pageSize
		v := find(fr.Addr)
		if v == nil || end > v.End || v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar || v.Kind == core.VMASharedFile {
			return &core.ImageError{File: path, Reason: fmt.Sprintf("pages at %#x-%#x lie outside the areas that hold pages", fr.Addr, end)}
		}
		// Fresh anonymous memory is already zero; a private file mapping
		// needs its zero pages written over the file's data.
		skipZero := v.Kind == core.VMAAnon || v.Kind == core.VMASharedAnon
		for i := 0; i < fr.Pages; {
			if skipZero && fr.IsZero(i) {
				i++
				continue
			}
			j := i + 1
			for j < fr.Pages && !(skipZero && fr.IsZero(j)) {
				j++
			}
			if _, err := ptrace.WriteMem(r.pid, fr.Addr+uint64(i)*pageSize, fr.Data[i*pageSize:j*pageSize]); err != nil {
				return err
			}
			i = j
		}
		r.pages += uint64(fr.Pages)
	}
	if r.pages != r.img.Pages.Pages {
		return &core.ImageError{File: path, Reason: fmt.Sprintf("%d pages in the stream, the image says %d", r.pages, r.img.Pages.Pages)}
	}
	return nil
}

// protect sets each area's final protection and re-applies its madvise
// advice.
func (r *restorer) protect(context.Context) error {
	for _, v := range r.img.Process.VMAs {
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			continue
		}
		if v.Pages > 0 && v.Prot != v.Prot|unix.PROT_WRITE|unix.PROT_READ {
			if _, err := r.sys("mprotect", unix.SYS_MPROTECT, v.Start, v.Len(), uint64(v.Prot)); err != nil {
				return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
			}
		}
		for _, a := range v.Madvise {
			if _, err := r.sys("madvise", unix.SYS_MADVISE, v.Start, v.Len(), uint64(a)); err != nil {
				r.warn("area %#x-%#x: madvise(%d): %v", v.Start, v.End, a, err)
			}
		}
	}
	return nil
}
