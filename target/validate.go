package target

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"migrate/core"
	"migrate/core/proc"
	"migrate/core/ptrace"
	"migrate/pagestream"
)

// validate checks everything a restore needs before anything is created:
// the files of the image, the files the process maps, the vdso, and that
// its PID is free.
func validate(dir string, img *core.Image) error {
	if err := checkIncoming(img); err != nil {
		return err
	}
	for _, pp := range img.Processes() {
		if err := validateProcess(dir, pp.Process, pp.Pages); err != nil {
			if pp.Process != &img.Process {
				return fmt.Errorf("process %d: %w", pp.Process.PID, err)
			}
			return err
		}
	}
	for _, p := range img.Tree {
		if p.Zombie != nil {
			if err := pidFree(p.PID); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkIncoming is the one place where a process from outside (an image
// directory's metadata, a live migration's layouts and final state) is
// checked before the restore acts on it: the image model's own rules
// (core.Image.Validate: ranges, counts, blob names, every path the restore
// opens absolute and clean) and this host's kernel limits.
func checkIncoming(img *core.Image) error {
	if err := img.Validate(); err != nil {
		return err
	}
	lim := readHostLimits()
	for _, pp := range img.Processes() {
		if err := lim.check(pp.Process); err != nil {
			return fmt.Errorf("process %d: %w", pp.Process.PID, err)
		}
	}
	if n := len(img.Tree) + 1; n > lim.pidMax {
		return fmt.Errorf("%w: %d processes, kernel.pid_max is %d", ErrHostLimit, n, lim.pidMax)
	}
	return nil
}

// ErrHostLimit: the process has more of something than this host's kernel
// allows a process (so it could not be rebuilt here).
var ErrHostLimit = errors.New("beyond this host's kernel limits")

// hostLimits are the kernel limits a restored process must fit in. They
// also bound what a hostile source can make the service build.
type hostLimits struct {
	maxMapCount int // vm.max_map_count: areas of one process (65530 by default)
	threadsMax  int // kernel.threads-max: threads of the whole system
	nrOpen      int // fs.nr_open: the highest fd number + 1 (1048576 by default)
	pidMax      int // kernel.pid_max
}

// readHostLimits reads the limits from /proc/sys; one that cannot be read
// takes the kernel's default.
func readHostLimits() hostLimits {
	read := func(name string, def int) int {
		b, err := os.ReadFile("/proc/sys/" + name)
		if err != nil {
			return def
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n <= 0 {
			return def
		}
		return n
	}
	return hostLimits{
		maxMapCount: read("vm/max_map_count", 65530),
		threadsMax:  read("kernel/threads-max", 1<<15),
		nrOpen:      read("fs/nr_open", 1<<20),
		pidMax:      read("kernel/pid_max", 1<<22),
	}
}

func (l hostLimits) check(p *core.Process) error {
	switch {
	case len(p.VMAs) > l.maxMapCount:
		return fmt.Errorf("%w: %d memory areas, vm.max_map_count is %d", ErrHostLimit, len(p.VMAs), l.maxMapCount)
	case len(p.Threads) > l.threadsMax:
		return fmt.Errorf("%w: %d threads, kernel.threads-max is %d", ErrHostLimit, len(p.Threads), l.threadsMax)
	case len(p.FDs) > l.nrOpen:
		return fmt.Errorf("%w: %d fds, fs.nr_open is %d", ErrHostLimit, len(p.FDs), l.nrOpen)
	}
	for _, f := range p.FDs {
		if f.FD >= l.nrOpen {
			return fmt.Errorf("%w: fd %d, fs.nr_open is %d", ErrHostLimit, f.FD, l.nrOpen)
		}
	}
	return nil
}

// processBlobs returns the names of the blobs p refers to.
func processBlobs(p *core.Process, blobs map[string]bool) {
	for _, fd := range p.FDs {
		if fd.Data != "" {
			blobs[fd.Data] = true
		}
		if fd.File != nil && fd.File.Blob != "" {
			blobs[fd.File.Blob] = true
		}
		if fd.Socket != nil && fd.Socket.Queue != "" {
			blobs[fd.Socket.Queue] = true
		}
		if fd.Socket != nil && fd.Socket.TCP != nil {
			for _, q := range []string{fd.Socket.TCP.SendQueue, fd.Socket.TCP.RecvQueue} {
				if q != "" {
					blobs[q] = true
				}
			}
		}
	}
	for _, v := range p.VMAs {
		if v.File != nil && v.File.Blob != "" {
			blobs[v.File.Blob] = true
		}
	}
}

// validateProcess checks what the restore of one process needs.
func validateProcess(dir string, p *core.Process, info *core.PagesInfo) error {
	pages := filepath.Join(dir, info.File)
	fi, err := os.Stat(pages)
	if err != nil {
		return &core.ImageError{File: pages, Reason: "page data missing", Err: err}
	}
	if fi.Size() != info.Size {
		return &core.ImageError{File: pages, Reason: fmt.Sprintf("page data is %d bytes, the image says %d (truncated or replaced)", fi.Size(), info.Size)}
	}
	blobs := map[string]bool{}
	processBlobs(p, blobs)
	for b := range blobs {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return &core.ImageError{File: filepath.Join(dir, b), Reason: "file of the image missing", Err: err}
		}
	}
	// The whole stream's structure and checksums, without decompressing:
	// a cut or a flipped byte is found before any process exists.
	f, err := os.Open(pages)
	if err != nil {
		return &core.ImageError{File: pages, Reason: "cannot open page data", Err: err}
	}
	st, err := pagestream.Verify(f)
	f.Close()
	if err != nil {
		return &core.ImageError{File: pages, Reason: "bad page data", Err: err}
	}
	if st.Pages != info.Pages {
		return &core.ImageError{File: pages, Reason: fmt.Sprintf("%d pages in the stream, the image says %d", st.Pages, info.Pages)}
	}
	for _, d := range []struct{ what, path string }{{"working directory", p.Cwd}, {"root directory", p.Root}} {
		if fi, err := os.Stat(d.path); err != nil || !fi.IsDir() {
			if err == nil {
				err = &fs.PathError{Op: "stat", Path: d.path, Err: unix.ENOTDIR}
			}
			return &core.ImageError{File: d.path, Reason: d.what + " of the process is gone", Err: err}
		}
	}
	if err := sameFile(&p.Exe, "executable"); err != nil {
		return err
	}
	for _, v := range p.VMAs {
		if v.File == nil || v.File.Deleted {
			continue
		}
		if err := sameFile(v.File, fmt.Sprintf("file mapped at %#x", v.Start)); err != nil {
			return err
		}
	}
	for _, fd := range p.FDs {
		switch fd.Kind {
		case core.FDFile, core.FDDir, core.FDChar, core.FDFIFO:
			if fd.File.Deleted {
				continue
			}
			if _, err := os.Stat(fd.File.Path); err != nil {
				return fmt.Errorf("fd %d: %s: %w", fd.FD, fd.File.Path, err)
			}
		case core.FDPipe, core.FDEventfd, core.FDMemfd, core.FDSocket, core.FDEpoll, core.FDTimerfd, core.FDSignalfd, core.FDInotify:
		default:
			return fmt.Errorf("fd %d: unknown kind %q", fd.FD, fd.Kind)
		}
	}
	if err := checkVDSO(p.VMAs); err != nil {
		return err
	}
	for _, t := range p.Threads {
		if err := pidFree(t.TID); err != nil {
			return err
		}
	}
	return nil
}

// sameFile checks that the file at ref.Path is the one that was dumped.
func sameFile(ref *core.FileRef, what string) error {
	var st unix.Stat_t
	if err := unix.Stat(ref.Path, &st); err != nil {
		return &core.ImageError{File: ref.Path, Reason: what + " is gone", Err: &fs.PathError{Op: "stat", Path: ref.Path, Err: err}}
	}
	if st.Size != ref.Size || st.Mtim.Nano() != ref.Mtime {
		return &core.ImageError{File: ref.Path, Reason: fmt.Sprintf("%s changed since the dump (size %d, was %d; mtime %s, was %s)",
			what, st.Size, ref.Size, time.Unix(0, st.Mtim.Nano()).UTC().Format(time.RFC3339Nano), time.Unix(0, ref.Mtime).UTC().Format(time.RFC3339Nano))}
	}
	return nil
}

func pidFree(pid int) error {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	holder := strings.TrimSpace(string(b))
	if err != nil {
		holder = "?"
	}
	return &PIDInUseError{PID: pid, Holder: holder}
}

// specialAreas returns this process's [vdso] and [vvar*] areas.
func specialAreas(maps []proc.Mapping) []proc.Mapping {
	var out []proc.Mapping
	for _, m := range maps {
		if m.Path == "[vdso]" || m.Path == "[vvar]" || m.Path == "[vvar_vclock]" {
			out = append(out, m)
		}
	}
	return out
}

// checkVDSO compares the image's vdso areas with this kernel's: the same
// areas, sizes and relative layout, and the same vdso code.
func checkVDSO(vmas []core.VMA) error {
	maps, err := proc.ReadMaps(os.Getpid())
	if err != nil {
		return err
	}
	ours := specialAreas(maps)
	var theirs []core.VMA
	for _, v := range vmas {
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			theirs = append(theirs, v)
		}
	}
	if len(theirs) == 0 {
		return &VDSOMismatchError{Reason: "the image has no [vdso]"}
	}
	if len(theirs) != len(ours) {
		return &VDSOMismatchError{Reason: fmt.Sprintf("%d vdso/vvar areas here, %d in the image", len(ours), len(theirs))}
	}
	for i := range ours {
		o, t := ours[i], theirs[i]
		if o.Path != t.Name || o.End-o.Start != t.Len() ||
			o.Start-ours[0].Start != t.Start-theirs[0].Start {
			return &VDSOMismatchError{Reason: fmt.Sprintf("%s of %d bytes at +%#x here, %s of %d bytes at +%#x in the image",
				o.Path, o.End-o.Start, o.Start-ours[0].Start, t.Name, t.Len(), t.Start-theirs[0].Start)}
		}
		if t.Kind == core.VMAVDSO {
			buf := make([]byte, o.End-o.Start)
			if _, err := ptrace.ReadMem(os.Getpid(), o.Start, buf); err != nil {
				return err
			}
			sum := sha256.Sum256(buf)
			if hex.EncodeToString(sum[:]) != t.Hash {
				return &VDSOMismatchError{Reason: "the vdso code differs (another kernel build)"}
			}
		}
	}
	return nil
}
