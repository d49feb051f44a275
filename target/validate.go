package target

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/pagestream"
)

// validate checks everything a restore needs before anything is created:
// the files of the image, the files the process maps, the vdso, and that
// its PID is free.
func validate(ctx context.Context, dir string, img *core.Image) error {
	if err := checkIncoming(img); err != nil {
		return err
	}
	if err := checkCPU(img.CPU, hostXCR0()); err != nil {
		return err
	}
	for _, pp := range img.Processes() {
		if err := validateProcess(ctx, dir, img, pp.Process, pp.Pages); err != nil {
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
	return checkBindSources(img.Mounts)
}

// checkIncoming is the one place where a process from outside (an image
// directory's metadata, a live migration's layouts and final state) is
// checked before the restore acts on it: the image model's own rules
// (core.Image.Validate: ranges, counts, blob names, every path the restore
// opens absolute and clean) and this host's kernel limits on how many
// areas, threads, fds and processes it may have (checkKernelLimits).
func checkIncoming(img *core.Image) error {
	if err := img.Validate(); err != nil {
		return err
	}
	lim := readKernelLimits()
	for _, pp := range img.Processes() {
		if err := lim.check(pp.Process); err != nil {
			return fmt.Errorf("process %d: %w", pp.Process.PID, err)
		}
		if err := checkAudit(pp.Process); err != nil {
			return err
		}
	}
	if n := len(img.Tree) + 1; n > lim.pidMax {
		return &HostLimitError{What: "kernel.pid_max", Need: uint64(n), Limit: uint64(lim.pidMax)}
	}
	return nil
}

// kernelLimits are the kernel limits a restored process must fit in. They
// also bound what a hostile source can make the service build.
type kernelLimits struct {
	maxMapCount int // vm.max_map_count: areas of one process (65530 by default)
	threadsMax  int // kernel.threads-max: threads of the whole system
	nrOpen      int // fs.nr_open: the highest fd number + 1 (1048576 by default)
	pidMax      int // kernel.pid_max
}

// kernelLimitsCache keeps what readKernelLimits read for a little while:
// every layout of a live migration is checked against the limits, the
// last one and the state in the downtime, and four /proc/sys files cost
// ~0.15 ms each time.
var kernelLimitsCache struct {
	sync.Mutex
	at  time.Time
	lim kernelLimits
}

// kernelLimitsTTL is how long the limits read are used again: an
// operator who raises one sees it used within that time.
const kernelLimitsTTL = 2 * time.Second

// readKernelLimits reads the limits from /proc/sys (again after
// kernelLimitsTTL); one that cannot be read takes the kernel's default.
func readKernelLimits() kernelLimits {
	c := &kernelLimitsCache
	c.Lock()
	defer c.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < kernelLimitsTTL {
		return c.lim
	}
	c.lim, c.at = readKernelLimitsNow(), time.Now()
	return c.lim
}

func readKernelLimitsNow() kernelLimits {
	read := func(name string, def int) int {
		n, err := kernel.ReadProcInt("/proc/sys/" + name)
		if err != nil || n <= 0 {
			return def
		}
		return n
	}
	return kernelLimits{
		maxMapCount: read("vm/max_map_count", 65530),
		threadsMax:  read("kernel/threads-max", 1<<15),
		nrOpen:      read("fs/nr_open", 1<<20),
		pidMax:      read("kernel/pid_max", 1<<22),
	}
}

// check checks the counts of p, and its fd numbers (fs.nr_open: neither
// dup3 nor a raised RLIMIT_NOFILE can pass it).
func (l kernelLimits) check(p *core.Process) error {
	switch {
	case len(p.VMAs) > l.maxMapCount:
		return &HostLimitError{What: "vm.max_map_count", Need: uint64(len(p.VMAs)), Limit: uint64(l.maxMapCount)}
	case len(p.Threads) > l.threadsMax:
		return &HostLimitError{What: "kernel.threads-max", Need: uint64(len(p.Threads)), Limit: uint64(l.threadsMax)}
	case len(p.FDs) > l.nrOpen:
		return &HostLimitError{What: "fs.nr_open", Need: uint64(len(p.FDs)), Limit: uint64(l.nrOpen)}
	}
	for _, fd := range p.FDs {
		if fd.FD+FDsAbove >= l.nrOpen {
			return fmt.Errorf("fd %d: %w", fd.FD, &HostLimitError{What: "fs.nr_open", Need: uint64(fd.FD+FDsAbove) + 1, Limit: uint64(l.nrOpen),
				Hint: fmt.Sprintf("the restore needs %d fds of its own above the highest", FDsAbove)})
		}
	}
	return nil
}

// FDsAbove is how many fd numbers a restore uses above the process's
// highest fd while it puts the fds in place: the agent's pidfd and the
// socket that passes the fds (makeRoomForFDs, installFDs).
const FDsAbove = 2

// checkHostLimits checks the values of p that this host bounds beyond
// checkIncoming (core.Validate checks what every kernel bounds): the
// RLIMIT_NOFILE its highest fd needs, and the mm fields PR_SET_MM_MAP
// needs. It is shared by the restore from
// files and the live one.
func checkHostLimits(p *core.Process) error {
	if !p.MM.Set() {
		return fmt.Errorf("%w: no mm fields (code, data, stack, auxv)", core.ErrInconsistent)
	}
	if err := checkAttrs(p); err != nil {
		return err
	}
	// Fd numbers below fs.nr_open: checkIncoming (kernelLimits.check).
	top := 64 + len(p.FDs) // the agent's pidfd (openAgentPidfd)
	for _, fd := range p.FDs {
		top = max(top, fd.FD+FDsAbove)
	}
	// The child gets RLIMIT_NOFILE top+1 (makeRoomForFDs): above
	// migrate's hard limit only with CAP_SYS_RESOURCE.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	if uint64(top) >= lim.Max {
		st, err := proc.ReadStatus(os.Getpid())
		if err != nil {
			return err
		}
		if st.CapEff&(1<<unix.CAP_SYS_RESOURCE) == 0 {
			return fmt.Errorf("fd %d: %w", top, &HostLimitError{What: "RLIMIT_NOFILE", Need: uint64(top) + 1, Limit: lim.Max,
				Hint: "the hard limit of migrate, which lacks CAP_SYS_RESOURCE to raise it"})
		}
	}
	return nil
}

// validateProcess checks what the restore of one process needs.
func validateProcess(ctx context.Context, dir string, img *core.Image, p *core.Process, info *core.PagesInfo) error {
	if err := checkHostLimits(p); err != nil {
		return err
	}
	pages := filepath.Join(dir, info.File)
	f, err := openImageFile(dir, info.File)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return &core.ImageError{File: pages, Reason: "cannot stat page data", Err: err}
	}
	if fi.Size() != info.Size {
		return &core.ImageError{File: pages, Reason: fmt.Sprintf("page data is %d bytes, the image says %d (truncated or replaced)", fi.Size(), info.Size)}
	}
	// Every blob whole: there, regular, of its recorded size and hash.
	checked := map[string]bool{}
	for _, b := range p.BlobNames() {
		if checked[b] {
			continue
		}
		checked[b] = true
		if err := checkBlob(ctx, dir, img, b); err != nil {
			return err
		}
	}
	// The stream's two ends: a stream cut short, whatever size the image
	// records, is found before any process exists. The rest (every
	// frame's checksums, sizes, order and contents) is verified as the
	// fill reads it, before the process runs (fillPages): reading the
	// whole stream twice cost a tenth of a second a GiB.
	st, err := pagestream.CheckEnds(f, fi.Size())
	if err != nil {
		return &core.ImageError{File: pages, Reason: "bad page data", Err: err}
	}
	if st.Pages != info.Pages {
		return &core.ImageError{File: pages, Reason: fmt.Sprintf("%d pages in the stream, the image says %d", st.Pages, info.Pages)}
	}
	pr := newPathRoot(img.Mounts)
	for _, d := range []struct{ what, path string }{{"working directory", p.Cwd}, {"root directory", p.Root}} {
		var st unix.Stat_t
		if err := pr.stat(d.path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err == nil {
				err = &fs.PathError{Op: "stat", Path: d.path, Err: unix.ENOTDIR}
			}
			return &core.ImageError{File: d.path, Reason: d.what + " of the process is gone", Err: err}
		}
	}
	if err := sameFile(pr, &p.Exe, "executable"); err != nil {
		return err
	}
	for _, v := range p.VMAs {
		if v.File == nil || v.File.Deleted {
			continue
		}
		if err := sameFile(pr, v.File, fmt.Sprintf("file mapped at %#x", v.Start)); err != nil {
			return err
		}
	}
	for _, fd := range p.FDs {
		switch fd.Kind {
		case core.FDFile, core.FDDir, core.FDChar, core.FDFIFO:
			if fd.File.Deleted {
				continue
			}
			var st unix.Stat_t
			if err := pr.stat(fd.File.Path, &st); err != nil {
				return fmt.Errorf("fd %d: %s: %w", fd.FD, fd.File.Path, &fs.PathError{Op: "stat", Path: fd.File.Path, Err: err})
			}
			if err := unchangedFile(&st, &fd); err != nil {
				return err
			}
		case core.FDPipe, core.FDEventfd, core.FDMemfd, core.FDSocket, core.FDEpoll, core.FDTimerfd, core.FDSignalfd, core.FDInotify, core.FDPidfd, core.FDExternal:
		default:
			return fmt.Errorf("fd %d: unknown kind %q", fd.FD, fd.Kind)
		}
	}
	if err := vdsoServed(p.VMAs); err != nil {
		return err
	}
	for _, t := range p.Threads {
		if err := pidFree(t.TID); err != nil {
			return err
		}
	}
	return nil
}

// sameFile checks that the file at ref.Path (where pr looks it up) is the
// one that was dumped.
func sameFile(pr *pathRoot, ref *core.FileRef, what string) error {
	var st unix.Stat_t
	if err := pr.stat(ref.Path, &st); err != nil {
		return &core.ImageError{File: ref.Path, Reason: what + " is gone", Err: &fs.PathError{Op: "stat", Path: ref.Path, Err: err}}
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFCHR {
		return &core.ImageError{File: ref.Path, Reason: what + " is a " + fileType(st.Mode), Err: core.ErrNotRegular}
	}
	if st.Size == ref.Size && st.Mtim.Nano() == ref.Mtime {
		return nil
	}
	if ref.SHA256 != "" && st.Size == ref.Size {
		// A file of code: the same contents are the same file, whatever
		// its time (installed separately on this host, or copied).
		got, err := fileSHA256(pr, ref.Path)
		if err != nil {
			return &core.ImageError{File: ref.Path, Reason: what + " cannot be read to compare its contents", Err: err}
		}
		if got == ref.SHA256 {
			return nil
		}
		return &core.ImageError{File: ref.Path, Reason: fmt.Sprintf("%s differs from the one dumped (SHA-256 %s, was %s)", what, got, ref.SHA256)}
	}
	return &core.ImageError{File: ref.Path, Reason: fmt.Sprintf("%s changed since the dump (size %d, was %d; mtime %s, was %s)",
		what, st.Size, ref.Size, time.Unix(0, st.Mtim.Nano()).UTC().Format(time.RFC3339Nano), time.Unix(0, ref.Mtime).UTC().Format(time.RFC3339Nano))}
}

// fileSHA256 is the hex SHA-256 of the contents of the file at path
// (where pr looks it up).
func fileSHA256(pr *pathRoot, path string) (string, error) {
	f, err := pr.open(path, os.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW)
	if err != nil {
		if f, err = pr.open(path, os.O_RDONLY|unix.O_NOFOLLOW); err != nil {
			return "", err
		}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// pidFree says whether pid is free here, a *PIDInUseError if not. A
// process that has just ended (dumped and killed, moved away) may hold
// its PID a moment longer, dead, until its parent reaps it: such a holder
// is waited for, up to zombieWait.
func pidFree(pid int) error {
	deadline := time.Now().Add(zombieWait)
	for {
		err := pidTaken(pid)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		if st, serr := proc.ReadStat(pid); serr != nil || (st.State != 'Z' && st.State != 'X') {
			if serr != nil && errors.Is(serr, fs.ErrNotExist) {
				continue // reaped meanwhile
			}
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// zombieWait bounds pidFree's wait for a dead holder of a PID to be
// reaped.
const zombieWait = 2 * time.Second

// pidTaken is pidFree without the wait.
func pidTaken(pid int) error {
	b, err := proc.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
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

// AuditError says a process's audit identity (login uid, session id) is
// not the one a process the restore makes has: it inherits the
// restorer's, and a session id cannot be chosen (the kernel gives a new
// one when the login uid is set).
type AuditError struct {
	PID        int
	Want, Have core.Audit
}

func (e *AuditError) Error() string {
	return fmt.Sprintf("process %d has audit login uid %d and session %d; a process this restorer makes has %d and %d (run the restorer in the same audit session, e.g. as a service, as the original ran)",
		e.PID, int32(e.Want.LoginUID), int32(e.Want.SessionID), int32(e.Have.LoginUID), int32(e.Have.SessionID))
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *AuditError) AbortCode() string { return "audit" }

// checkAudit refuses a process whose audit identity differs from the
// restorer's, which the process would get instead.
func checkAudit(p *core.Process) error {
	if p.Audit == nil {
		return nil
	}
	l, s, err := proc.ReadAudit(os.Getpid())
	if err != nil {
		return nil // no audit support: nothing to differ
	}
	if have := (core.Audit{LoginUID: l, SessionID: s}); have != *p.Audit {
		return &AuditError{PID: p.PID, Want: *p.Audit, Have: have}
	}
	return nil
}
