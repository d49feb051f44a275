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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/pagestream"
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

// collectVMAs reads the memory layout into the image. Page contents are
// read later.
//
// Preconditions: the process is frozen and no scratch page is mapped.
func (d *dumper) collectVMAs() error {
	vmas, err := readVMAs(d.pid)
	if err != nil {
		return err
	}
	d.proc.VMAs = vmas
	return nil
}

// readVMAs reads the memory layout of pid. The process may be running
// (pre-copy rounds re-read it); then the layout is a snapshot.
func readVMAs(pid int) ([]core.VMA, error) {
	maps, err := proc.ReadSmaps(pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	return vmasOf(pid, maps)
}

// readVMAsQuick reads the layout from /proc/PID/maps, without the flags
// only smaps has (madvise advice, growsdown): smaps walks the page tables
// to count pages, a dozen milliseconds for a GiB, which the frozen window
// should not wait for. addVmFlags adds them. refs, if not nil, are the
// mapped files the layouts of other frozen processes found (fileRefs).
func readVMAsQuick(pid int, refs *fileRefs) ([]core.VMA, error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	return vmasOfShared(pid, maps, refs)
}

// mappedFile names a mapped file as maps shows it.
type mappedFile struct {
	major, minor uint32
	inode        uint64
	path         string
}

// fileRefs are the files the layouts of frozen processes map, each looked
// at once (fileRef, a readlink and a stat of its map_files link) for all
// of them: the processes of a forked tree map the same libraries, and
// frozen together they see each the same file (its device, inode and path
// as maps shows them) as it is then. Safe for concurrent use.
type fileRefs struct {
	mu sync.Mutex
	m  map[mappedFile]core.FileRef
}

func newFileRefs() *fileRefs { return &fileRefs{m: map[mappedFile]core.FileRef{}} }

// of returns the file that area m of process pid maps.
func (r *fileRefs) of(pid int, m *proc.Mapping) (core.FileRef, error) {
	key := mappedFile{m.Major, m.Minor, m.Inode, m.Path}
	if m.Inode != 0 {
		r.mu.Lock()
		ref, ok := r.m[key]
		r.mu.Unlock()
		if ok {
			return ref, nil
		}
	}
	ref, err := fileRef(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
	if err != nil {
		return core.FileRef{}, fmt.Errorf("process %d: mapping %#x-%#x of %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	if m.Inode != 0 {
		r.mu.Lock()
		r.m[key] = *ref
		r.mu.Unlock()
	}
	return *ref, nil
}

// addVmFlags sets, on a layout read with readVMAsQuick, the flags read from
// /proc/PID/smaps of the same (frozen) process. smaps may have been read
// with the scratch page [scratch, scratch+scratchLen) mapped, which the
// layout was read without: see withoutRange.
func addVmFlags(pid int, vmas []core.VMA, smaps []proc.Mapping, scratch, scratchLen uint64) error {
	if scratchLen > 0 {
		smaps = withoutRange(smaps, scratch, scratch+scratchLen)
	}
	byStart := make(map[uint64]*proc.Mapping, len(smaps))
	for i := range smaps {
		byStart[smaps[i].Start] = &smaps[i]
	}
	for i := range vmas {
		v := &vmas[i]
		m := byStart[v.Start]
		if m == nil || m.End != v.End {
			return fmt.Errorf("process %d: area %#x-%#x changed between maps and smaps", pid, v.Start, v.End)
		}
		if err := refuseMapping(pid, m); err != nil {
			return err
		}
		if m.HasFlag("gd") {
			v.Flags |= unix.MAP_GROWSDOWN
		}
		if m.HasFlag("nr") {
			v.Flags |= unix.MAP_NORESERVE
		}
		v.Lock = lockOf(m)
		v.MayWrite = (v.Kind == core.VMASharedFile || v.Kind == core.VMASysV) && m.HasFlag("mw")
		v.Madvise = nil
		for _, a := range vmFlagAdvice {
			if m.HasFlag(a.flag) {
				v.Madvise = append(v.Madvise, a.advice)
			}
		}
	}
	return nil
}

// refuseMapping returns an *UnsupportedMappingError for an area a restore
// cannot give back as it was: hugetlb memory (MAP_HUGETLB, a hugetlbfs
// file, SHM_HUGETLB), which would come back as small pages of another
// file; a shadow stack; an area under a memory
// protection key (the key would be lost, and the PKRU register that the
// thread state carries would then guard nothing). m may come from maps (the
// flags and the key show only in smaps, which the frozen dump reads) or
// smaps.
func refuseMapping(pid int, m *proc.Mapping) error {
	switch {
	case m.HasFlag("ht") || (m.Deleted && m.Path == "/anon_hugepage"):
		return &UnsupportedMappingError{PID: pid, Start: m.Start, End: m.End, Name: m.Path,
			Reason: "hugetlb memory is not carried (it would come back as normal pages)"}
	case m.HasFlag("ss"):
		return &UnsupportedMappingError{PID: pid, Start: m.Start, End: m.End, Name: m.Path,
			Reason: "a shadow stack (x86 CET) is not carried"}
	case m.ProtectionKey != 0:
		return &UnsupportedMappingError{PID: pid, Start: m.Start, End: m.End, Name: m.Path,
			Reason: fmt.Sprintf("memory protection key %d (pkey_mprotect) is not carried", m.ProtectionKey)}
	}
	return nil
}

// lockOf returns how the area m is locked in memory, from its smaps
// VmFlags ("lo" for VM_LOCKED, "lf" for VM_LOCKONFAULT); "" from maps.
func lockOf(m *proc.Mapping) string {
	switch {
	case m.HasFlag("lf"):
		return core.LockOnFault
	case m.HasFlag("lo"):
		return core.LockAll
	}
	return ""
}

// withoutRange returns maps with [lo, hi) cut out. The scratch page an
// injection maps is anonymous and read-write: the kernel merges it with an
// anonymous read-write neighbour just below or above it, so a smaps read
// while it is mapped shows that neighbour grown by a page (or two areas
// joined through it). Cutting the range out gives back the areas as they
// were before the scratch page came, for the flags to be matched by their
// bounds; the flags of the pieces are those of the merged area, which the
// kernel merged only because they were the same.
func withoutRange(maps []proc.Mapping, lo, hi uint64) []proc.Mapping {
	out := make([]proc.Mapping, 0, len(maps)+1)
	for _, m := range maps {
		if m.End <= lo || m.Start >= hi {
			out = append(out, m)
			continue
		}
		if m.Start < lo {
			below := m
			below.End = lo
			out = append(out, below)
		}
		if m.End > hi {
			above := m
			above.Start = hi
			out = append(out, above)
		}
	}
	return out
}

// sameAreas says whether every area of vmas is in smaps with the same
// bounds, protection and mapping.
func sameAreas(vmas []core.VMA, smaps []proc.Mapping) bool {
	if len(smaps) == 0 {
		return false
	}
	byStart := make(map[uint64]*proc.Mapping, len(smaps))
	for i := range smaps {
		byStart[smaps[i].Start] = &smaps[i]
	}
	for i := range vmas {
		v := &vmas[i]
		m := byStart[v.Start]
		if m == nil || m.End != v.End || m.Prot != v.Prot || m.Offset != v.Offset || m.Shared != (v.Flags&unix.MAP_SHARED != 0) {
			return false
		}
		if v.File != nil && (v.File.Ino != m.Inode || v.File.Path != m.Path) {
			return false
		}
	}
	return true
}

// vmasOf turns maps (or smaps) lines into the image's areas.
func vmasOf(pid int, maps []proc.Mapping) ([]core.VMA, error) {
	return vmasOfShared(pid, maps, nil)
}

// vmasOfShared is vmasOf with the files mapped looked at through refs
// (nil: its own). The areas of one file (a library has four or five) are
// the same inode: it is looked at once.
func vmasOfShared(pid int, maps []proc.Mapping, refs *fileRefs) ([]core.VMA, error) {
	var vmas []core.VMA
	if refs == nil {
		refs = newFileRefs()
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
		if m.HasFlag("nr") {
			v.Flags |= unix.MAP_NORESERVE
		}
		v.Lock = lockOf(m)
		for _, a := range vmFlagAdvice {
			if m.HasFlag(a.flag) {
				v.Madvise = append(v.Madvise, a.advice)
			}
		}
		if err := refuseMapping(pid, m); err != nil {
			return nil, err
		}
		name := m.Path
		switch {
		case name == "[vsyscall]":
			continue // fixed by the kernel, not part of the mm
		case name == "[vdso]":
			v.Kind, v.Name = core.VMAVDSO, name
			buf := make([]byte, v.Len())
			if _, err := ptrace.ReadMemForce(pid, v.Start, buf); err != nil {
				return nil, fmt.Errorf("process %d: read [vdso]: %w", pid, err)
			}
			sum := sha256.Sum256(buf)
			v.Hash = hex.EncodeToString(sum[:])
			v.Code = buf
		case name == "[vvar]" || name == "[vvar_vclock]":
			v.Kind, v.Name = core.VMAVVar, name
		case strings.HasPrefix(name, "[anon_shmem:"):
			v.Kind, v.Name = core.VMASharedAnon, name
		case name == "" || name == "[heap]" || name == "[stack]" || strings.HasPrefix(name, "[anon:"):
			v.Kind, v.Name = core.VMAAnon, name
			if m.Shared {
				v.Kind = core.VMASharedAnon
			}
		case m.IsSysVShm():
			// Its contents go with the segment (Image.Shm), once.
			v.Kind, v.Shm = core.VMASysV, m.Inode
			v.MayWrite = m.HasFlag("mw") // attached read-only or not
		case m.Shared && m.Deleted && name == "/dev/zero":
			v.Kind, v.Name = core.VMASharedAnon, name
		case strings.HasPrefix(name, "/"):
			ref, err := refs.of(pid, m)
			if err != nil {
				return nil, err
			}
			ref.Path = name
			ref.Deleted = m.Deleted
			v.File = &ref
			if m.IsMemfd() {
				var err error
				if v.Seals, err = mappedSeals(pid, m); err != nil {
					return nil, err
				}
			}
			v.Kind = core.VMAFile
			if m.Shared {
				v.Kind = core.VMASharedFile
				v.MayWrite = m.HasFlag("mw")
			}
		default:
			return nil, &UnsupportedMappingError{PID: pid, Start: m.Start, End: m.End, Name: name}
		}
		if v.Kind == core.VMASharedAnon {
			// The shmem object behind it, which a fork shares: the
			// restore maps one object wherever the tree mapped it.
			v.Shm = m.Inode
		}
		vmas = append(vmas, v)
	}
	hashCodeAreas(pid, vmas)
	return vmas, nil
}

// mappedSeals returns the seals of the memfd m maps, which the process
// may hold no fd of.
func mappedSeals(pid int, m *proc.Mapping) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
	if err != nil {
		return 0, fmt.Errorf("process %d: mapping %#x-%#x of %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if errors.Is(err, unix.EINVAL) {
		return 0, nil // a memfd made without MFD_ALLOW_SEALING: F_SEAL_SEAL
	}
	if err != nil {
		return 0, fmt.Errorf("process %d: seals of %s mapped at %#x-%#x: %w", pid, m.Path, m.Start, m.End, err)
	}
	return seals, nil
}

// run is a range of pages to store.
type run struct{ start, end uint64 }

// sharedRuns finds the data of a shared anonymous mapping (or of a System
// V attachment) through its shmem file (SEEK_DATA/SEEK_HOLE), which also finds pages this process
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
// Several page streams (each written by its own goroutine) may share n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// maxRead is the size of one process_vm_readv.
const maxRead = 1 << 20

// pageSink writes pages of the process into the image's page stream,
// round after round, and remembers which pages it has sent.
type pageSink struct {
	d    *dumper
	path string
	f    *os.File
	n    atomic.Int64 // bytes written, every stream
	w    *pagestream.MultiWriter
	pm   *proc.Pagemap
	ents []proc.PagemapEntry
	// sent holds every page sent in any round: a page that is gone later
	// (unmapped and mapped again, MADV_DONTNEED) is sent as zeros so that
	// no stale copy survives in the image.
	sent  core.PageSet
	pages uint64 // pages written, all rounds
	// written counts pages as pages does, for a reader on another
	// goroutine (a round's Transfer reports).
	written atomic.Uint64
	// readTime is the time spent reading pagemaps and pages (the read
	// stage of StageReport).
	readTime time.Duration
	// onSent, if set, sees every page sent (the hash tracker keeps hashes).
	onSent func(addr uint64, data []byte)
	hooked bool
	closed bool
	// queued are runs of readable pages of one round waiting to be read
	// from the process in one process_vm_readv (see queue).
	queued      []pagestream.Run
	queuedRound uint32
	queuedPages int
	// racy: the process runs (pre-copy), so an area may be unmapped or
	// protected between the pagemap read and the read of its pages. Such
	// pages are skipped, not an error: the next round's layout shows the
	// area gone or changed (and reports a changed one whole).
	racy    bool
	skipped uint64 // pages skipped so
}

// maxQueuedRuns is how many runs one process_vm_readv reads: the
// kernel's IOV_MAX.
const maxQueuedRuns = 1024

func (d *dumper) openSink(codec pagestream.Codec) (*pageSink, error) {
	path := filepath.Join(d.dir, d.pages.File)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	s, err := d.newSink(codec, f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	s.f = f
	return s, nil
}

// newSink makes a sink that writes the page stream to w (a file, or a
// stream to the target of a live migration), named name in errors.
func (d *dumper) newSink(codec pagestream.Codec, w io.Writer, name string) (*pageSink, error) {
	return d.newSinks(codec, []io.Writer{w}, name)
}

// newSinks makes a sink that spreads the page stream over several
// (pagestream.MultiWriter): the live migration's page streams of one
// process.
func (d *dumper) newSinks(codec pagestream.Codec, ws []io.Writer, name string) (*pageSink, error) {
	s := &pageSink{d: d, path: name}
	// Frames are large: no buffering, which would only copy them again.
	cws := make([]io.Writer, len(ws))
	for i, w := range ws {
		cws[i] = &countingWriter{w: w, n: &s.n}
	}
	// Not Adaptive: storing frames raw when the compressors fall behind
	// made the 1 GiB benchmark's image 1.8x larger and its restore slower
	// (more to read and check) for a dump no faster on 2 cores.
	var err error
	if s.w, err = pagestream.NewMultiWriter(cws, pagestream.WriterOptions{Codec: codec}); err != nil {
		return nil, err
	}
	if s.pm, err = proc.OpenPagemap(d.pid); err != nil {
		s.w.Abort()
		return nil, fmt.Errorf("process %d: %w", d.pid, err)
	}
	return s, nil
}

// abort stops the writer and closes everything; the file is removed by
// the dump's rollback.
func (s *pageSink) abort() {
	if !s.closed {
		s.closed = true
		s.w.Abort() // no end frame: the stream reads as cut short
	}
	if s.pm != nil {
		s.pm.Close()
	}
	if s.f != nil {
		s.f.Close()
	}
}

// forget drops the pages queued to be read (of a process that exited).
func (s *pageSink) forget() {
	s.queued, s.queuedPages = s.queued[:0], 0
}

// finish ends the stream and syncs the file.
func (s *pageSink) finish() (pagestream.Stats, error) {
	if err := s.drain(context.Background()); err != nil {
		s.abort()
		return pagestream.Stats{}, err
	}
	s.closed = true
	defer s.pm.Close()
	if err := s.w.Close(); err != nil {
		return pagestream.Stats{}, fmt.Errorf("write %s: %w", s.path, err)
	}
	if s.f != nil {
		defer s.f.Close()
		if err := s.f.Sync(); err != nil {
			return pagestream.Stats{}, fmt.Errorf("sync %s: %w", s.path, err)
		}
	}
	return s.w.Stats(), nil
}

// stored says whether page e of an area of kind belongs in the image.
func stored(kind string, e proc.PagemapEntry) bool {
	swapped := e.Swapped() && !e.PTEMarker() // uffd-wp marks untouched pages with markers
	switch kind {
	case core.VMAFile:
		// Pages a private file mapping still shares with its file are not.
		return swapped || (e.Present() && !e.FileOrShared())
	case core.VMAAnon, core.VMASharedAnon, core.VMASysV:
		return e.Present() || swapped
	}
	return false
}

// holdsPages says whether pages of an area of this kind go into the image.
func holdsPages(kind string) bool {
	return kind == core.VMAAnon || kind == core.VMASharedAnon || kind == core.VMAFile
}

// holds says whether pages of an area of this kind go into the session's
// page streams: those of holdsPages, and with a live migration those of
// System V segments, which an offline dump stores whole as a blob
// (writeSysV) but a live migration pre-copies like shared anonymous
// memory, each attaching process sending the pages it wrote.
func (ss *session) holds(kind string) bool {
	return holdsPages(kind) || ss.opts.live && kind == core.VMASysV
}

// sendArea sends every stored page of v: untouched pages are skipped.
func (s *pageSink) sendArea(ctx context.Context, round uint32, v *core.VMA) error {
	if !s.d.holds(v.Kind) {
		return nil
	}
	if v.Kind == core.VMASharedAnon || v.Kind == core.VMASysV {
		// The shmem file also knows pages this process has not faulted in.
		if runs, err := sharedRuns(s.d.pid, v); err == nil {
			for _, r := range runs {
				if err := s.send(ctx, round, v, r.start, r.end); err != nil {
					return err
				}
			}
			return nil
		}
	}
	if err := s.sendRange(ctx, round, v, v.Start, v.End, false); err != nil {
		return err
	}
	return s.drain(ctx)
}

// sendRange sends the stored pages of [start, end) within v. With dirty,
// pages no longer there (unmapped and mapped again, or dropped by
// MADV_DONTNEED) that an earlier round sent go as zeros. Pages may wait
// in the queue (see drain).
func (s *pageSink) sendRange(ctx context.Context, round uint32, v *core.VMA, start, end uint64, dirty bool) error {
	const chunk = 1 << 30 // bytes of address space per pagemap read
	for at := start; at < end; at += chunk {
		stop := min(at+chunk, end)
		t := time.Now()
		ents, err := s.pm.Read(at, stop, s.ents)
		s.readTime += time.Since(t)
		if err != nil {
			return fmt.Errorf("process %d: pagemap of %#x-%#x: %w", s.d.pid, at, stop, err)
		}
		s.ents = ents
		if err := s.sendEntries(ctx, round, v, at, ents, dirty); err != nil {
			return err
		}
	}
	return nil
}

// sendEntries sends the stored pages among ents, the pagemap entries of
// the pages from at on, within v (see sendRange).
func (s *pageSink) sendEntries(ctx context.Context, round uint32, v *core.VMA, at uint64, ents []proc.PagemapEntry, dirty bool) error {
	var runStart, zeroStart uint64
	inRun, inZero := false, false
	flush := func(addr uint64) error {
		if inRun {
			inRun = false
			if err := s.send(ctx, round, v, runStart, addr); err != nil {
				return err
			}
		}
		if inZero {
			inZero = false
			if err := s.sendZeros(round, zeroStart, addr); err != nil {
				return err
			}
		}
		return nil
	}
	for i, e := range ents {
		addr := at + uint64(i)*pageSize
		switch {
		case stored(v.Kind, e):
			if inZero {
				if err := flush(addr); err != nil {
					return err
				}
			}
			if !inRun {
				runStart, inRun = addr, true
			}
		case dirty && s.sent.Has(addr):
			if inRun {
				if err := flush(addr); err != nil {
					return err
				}
			}
			if !inZero {
				zeroStart, inZero = addr, true
			}
		default:
			if err := flush(addr); err != nil {
				return err
			}
		}
	}
	return flush(at + uint64(len(ents))*pageSize)
}

// send reads [start, end) of the process and queues it. Runs of readable
// pages smaller than a read wait in the queue, to be read with others.
func (s *pageSink) send(ctx context.Context, round uint32, v *core.VMA, start, end uint64) error {
	readable := v.Prot&unix.PROT_READ != 0
	if readable && end-start < maxRead {
		return s.queue(ctx, round, start, end)
	}
	if err := s.drain(ctx); err != nil {
		return err
	}
	for at := start; at < end; at += maxRead {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(end-at, maxRead)
		buf := pagestream.GetBuffer(int(n))
		t := time.Now()
		var err error
		if readable {
			_, err = ptrace.ReadMem(s.d.pid, at, buf)
		} else {
			_, err = ptrace.ReadMemForce(s.d.pid, at, buf)
		}
		s.readTime += time.Since(t)
		if err != nil && s.racy && (errors.Is(err, unix.EFAULT) || errors.Is(err, unix.EIO)) {
			pagestream.PutBuffer(buf) // gone while the process runs: see racy
			s.skipped += n / pageSize
			continue
		}
		if err != nil {
			pagestream.PutBuffer(buf)
			return fmt.Errorf("process %d: read %#x-%#x: %w", s.d.pid, at, at+n, err)
		}
		if err := s.write(round, at, buf); err != nil {
			return err
		}
		if err := s.firstPages(); err != nil {
			return err
		}
	}
	return nil
}

// queue adds the readable pages [start, end) of round to the runs read
// together, reading them when the read is full.
func (s *pageSink) queue(ctx context.Context, round uint32, start, end uint64) error {
	pages := int((end - start) / pageSize)
	if len(s.queued) > 0 && (round != s.queuedRound || len(s.queued) == maxQueuedRuns || (s.queuedPages+pages)*pageSize > maxRead) {
		if err := s.drain(ctx); err != nil {
			return err
		}
	}
	s.queued = append(s.queued, pagestream.Run{Addr: start, Pages: pages})
	s.queuedRound = round
	s.queuedPages += pages
	return nil
}

// drain reads the queued runs from the process with one process_vm_readv
// and hands them to the page stream. Every path that ends a round (or
// sends pages another way) drains first.
func (s *pageSink) drain(ctx context.Context) error {
	if len(s.queued) == 0 {
		return nil
	}
	runs, round, pages := s.queued, s.queuedRound, s.queuedPages
	s.queued, s.queuedPages = s.queued[:0], 0
	if err := ctx.Err(); err != nil {
		return err
	}
	buf := pagestream.GetBuffer(pages * pageSize)
	iov := make([]unix.RemoteIovec, len(runs))
	for i, r := range runs {
		iov[i] = unix.RemoteIovec{Base: uintptr(r.Addr), Len: r.Pages * pageSize}
	}
	t := time.Now()
	n, err := ptrace.ReadMemv(s.d.pid, buf, iov)
	if (err == nil && n < len(buf)) || errors.Is(err, unix.EFAULT) {
		// A run could not be read whole: read them one by one, to skip
		// the ones gone while the process runs, or name the one that
		// failed.
		kept, off := runs[:0], 0
		err = nil
		for _, r := range runs {
			l := r.Pages * pageSize
			if _, rerr := ptrace.ReadMem(s.d.pid, r.Addr, buf[off:off+l]); rerr != nil {
				if s.racy && errors.Is(rerr, unix.EFAULT) {
					s.skipped += uint64(r.Pages)
					continue
				}
				err = rerr
				break
			}
			kept = append(kept, r)
			off += l
		}
		if err == nil && len(kept) == 0 {
			pagestream.PutBuffer(buf)
			return nil
		}
		runs, buf, pages = kept, buf[:off], off/pageSize
	}
	s.readTime += time.Since(t)
	if err != nil {
		pagestream.PutBuffer(buf)
		return fmt.Errorf("process %d: read %d runs of pages from %#x: %w", s.d.pid, len(runs), runs[0].Addr, err)
	}
	off := 0
	for _, r := range runs {
		l := r.Pages * pageSize
		if s.onSent != nil {
			s.onSent(r.Addr, buf[off:off+l])
		}
		s.sent.AddRange(r.Addr, r.Addr+uint64(l))
		off += l
	}
	if err := s.w.WriteRuns(round, runs, buf); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	s.pages += uint64(pages)
	s.written.Add(uint64(pages))
	return s.firstPages()
}

// firstPages calls the dump's test hook once, after the first pages went
// to the stream.
func (s *pageSink) firstPages() error {
	if s.hooked {
		return nil
	}
	s.hooked = true
	return s.d.hook(stageMemory)
}

func (s *pageSink) sendZeros(round uint32, start, end uint64) error {
	for at := start; at < end; at += maxRead {
		n := min(end-at, maxRead)
		buf := pagestream.GetBuffer(int(n))
		clear(buf)
		if err := s.write(round, at, buf); err != nil {
			return err
		}
	}
	return nil
}

func (s *pageSink) write(round uint32, addr uint64, buf []byte) error {
	if s.onSent != nil {
		s.onSent(addr, buf)
	}
	if err := s.w.WritePages(round, addr, buf); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	n := uint64(len(buf)) / pageSize
	s.pages += n
	s.written.Add(n)
	s.sent.AddRange(addr, addr+uint64(len(buf)))
	return nil
}

// endRound reads what waits in the queue and closes round with a
// barrier frame.
func (s *pageSink) endRound(round uint32) error {
	if err := s.drain(context.Background()); err != nil {
		return err
	}
	if err := s.w.Barrier(round); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	return nil
}

// dumpMemory writes every stored page of the frozen process as one round.
//
// Preconditions: the process is frozen.
func (d *dumper) dumpMemory(ctx context.Context, s *pageSink, round uint32) error {
	vmas := d.proc.VMAs
	for i := range vmas {
		if err := s.sendArea(ctx, round, &vmas[i]); err != nil {
			return err
		}
	}
	return s.endRound(round)
}

// finishPages ends the page stream and records it in the image, with the
// number of pages each area got.
func (d *dumper) finishPages(s *pageSink, rounds int) (pagestream.Stats, error) {
	st, err := s.finish()
	if err != nil {
		return st, err
	}
	d.recordPages(s, st, rounds)
	return st, nil
}

// recordPages records in the image the page stream s ended with the
// counts st: the number of pages each area got, and the stream's.
func (d *dumper) recordPages(s *pageSink, st pagestream.Stats, rounds int) {
	for i := range d.proc.VMAs {
		v := &d.proc.VMAs[i]
		if holdsPages(v.Kind) {
			v.Pages = s.sent.Count(v.Start, v.End)
		}
	}
	d.pages.Size = s.n.Load()
	d.pages.Pages = st.Pages
	d.pages.Rounds = rounds
}
