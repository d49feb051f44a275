package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"migrate/core"
	"migrate/core/proc"
	"migrate/core/ptrace"
)

// restorer holds the state of one restore.
type restorer struct {
	dir  string
	img  *core.Image
	log  *slog.Logger
	tr   *ptrace.Tracer
	husk *exec.Cmd
	hp   *ptrace.Proc // the husk
	p    *ptrace.Proc // the process being built, with the original PID
	pid  int

	scratch uint64 // scratch area in the child for injected calls' arguments
	// agentFD is the child's pidfd for this agent, used to pull in fds.
	agentFD int
	// files the agent opened for the child; closed when the restore ends.
	files    []*os.File
	warnings []string
	// deletedFiles are the recreated deleted files and memfds, by dev/ino
	// of the original, shared by the mappings and fds that used it.
	deletedFiles map[fileKey]*os.File
	pages        uint64
	memTime      time.Duration
}

const scratchLen = 64 << 10

func restore(ctx context.Context, opts RestoreOptions) (rep *RestoreReport, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	img, err := core.ReadImage(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := validate(opts.Dir, img); err != nil {
		return nil, err
	}
	r := &restorer{dir: opts.Dir, img: img, log: log, pid: img.Process.PID, agentFD: -1}
	r.tr = ptrace.NewTracer()
	defer r.tr.Close()
	defer r.closeFiles()
	ok := false
	defer func() {
		if !ok {
			r.abort()
		}
	}()
	var steps []Step
	todo := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"recreate deleted files", r.prepareDeleted},
		{"create process", r.create},
		{"lay out memory", r.layout},
		{"fill memory", r.fillPages},
		{"set protections", r.protect},
		{"restore files", r.restoreFDs},
		{"restore process state", r.restoreState},
		{"restore threads", r.restoreThreads},
	}
	for _, s := range todo {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("restore pid %d: %s: %w", r.pid, s.name, err)
		}
		steps = append(steps, Step{Name: s.name, MS: float64(time.Since(t).Microseconds()) / 1000})
		log.Info("restore step", "step", s.name, "ms", time.Since(t).Milliseconds())
	}
	if err := r.p.Detach(); err != nil {
		return nil, fmt.Errorf("restore pid %d: resume: %w", r.pid, err)
	}
	ok = true
	if st, err := proc.ReadStat(r.pid); err != nil || st.State == 'Z' || st.State == 'X' {
		return nil, fmt.Errorf("restore pid %d: the process died as soon as it resumed", r.pid)
	}
	rep = &RestoreReport{
		PID:      r.pid,
		Comm:     img.Process.Comm,
		Pages:    r.pages,
		Total:    time.Since(start),
		MemoryMS: float64(r.memTime.Microseconds()) / 1000,
		Warnings: r.warnings,
		Steps:    steps,
	}
	rep.TotalMS = float64(rep.Total.Microseconds()) / 1000
	return rep, nil
}

func (r *restorer) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.warnings = append(r.warnings, msg)
	r.log.Warn(msg)
}

// abort kills whatever was built. Nothing of a failed restore runs on.
func (r *restorer) abort() {
	if r.p != nil {
		r.p.Kill(true)
	}
	if r.hp != nil {
		r.hp.Kill(true)
	}
	if r.husk != nil {
		r.husk.Process.Kill()
		r.husk.Wait()
	}
}

func (r *restorer) closeFiles() {
	for _, f := range r.files {
		f.Close()
	}
	r.files = nil
}

// sys injects a system call into the restored process's leader.
func (r *restorer) sys(name string, nr uintptr, args ...uint64) (uint64, error) {
	return r.p.Syscall(r.p.Leader(), name, nr, args...)
}

// put writes b into the scratch area at off and returns its address.
func (r *restorer) put(off uint64, b []byte) (uint64, error) {
	if off+uint64(len(b)) > scratchLen {
		return 0, fmt.Errorf("%d bytes do not fit in the scratch area", len(b))
	}
	if _, err := ptrace.WriteMem(r.pid, r.scratch+off, b); err != nil {
		return 0, err
	}
	return r.scratch + off, nil
}

// cloneArgs is struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1).
type cloneArgs struct {
	Flags, Pidfd, ChildTID, ParentTID, ExitSignal, Stack, StackSize, TLS, SetTID, SetTIDSize uint64
}

// create starts the husk and forks the process with the original PID out
// of it; the husk then dies and the new process is reparented to init.
func (r *restorer) create(context.Context) error {
	var err error
	if r.husk, err = startHusk(); err != nil {
		return err
	}
	if r.hp, err = r.tr.SeizeOwned(r.husk.Process.Pid); err != nil {
		return fmt.Errorf("seize husk: %w", err)
	}
	r.hp.SetGadget(huskSyscall)
	tid := int32(r.pid)
	ca := cloneArgs{ExitSignal: uint64(unix.SIGCHLD), SetTID: huskData + 128, SetTIDSize: 1}
	if _, err := ptrace.WriteMemForce(r.husk.Process.Pid, huskData, ptrace.Bytes(&ca)); err != nil {
		return fmt.Errorf("write clone_args into husk: %w", err)
	}
	if _, err := ptrace.WriteMemForce(r.husk.Process.Pid, huskData+128, ptrace.Bytes(&tid)); err != nil {
		return fmt.Errorf("write clone_args into husk: %w", err)
	}
	child, err := r.hp.Syscall(r.hp.Leader(), "clone3", unix.SYS_CLONE3, huskData, uint64(len(ptrace.Bytes(&ca))))
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return pidFree(r.pid)
		}
		return err
	}
	if int(child) != r.pid {
		return fmt.Errorf("clone3 made pid %d, want %d", child, r.pid)
	}
	if r.p, err = r.hp.Adopt(r.pid); err != nil {
		return err
	}
	// The husk has done its job. Its death reparents the child to init
	// (or the nearest subreaper), so the process outlives migrate.
	if err := r.hp.Kill(true); err != nil {
		return err
	}
	r.hp = nil
	r.husk.Wait()
	r.husk = nil
	return nil
}

// holes returns a free range of n bytes avoiding both the child's current
// mappings and the image's layout.
func holeFor(n uint64, busy [][2]uint64) (uint64, error) {
	sort.Slice(busy, func(i, j int) bool { return busy[i][0] < busy[j][0] })
	for _, base := range []uint64{1 << 32, 1 << 20} {
		at := base
		for _, b := range busy {
			if b[1] <= at {
				continue
			}
			if b[0] >= at+n {
				break
			}
			at = (b[1] + 0xffff) &^ 0xffff
		}
		if at+n < 1<<46 {
			return at, nil
		}
	}
	return 0, errors.New("no free address range for a scratch area")
}

// layout turns the child's address space (a copy of the husk's) into the
// image's: a scratch area, everything of the husk unmapped, vdso and vvar
// moved to their old addresses, then every area mapped.
func (r *restorer) layout(context.Context) error {
	cur, err := proc.ReadMaps(r.pid)
	if err != nil {
		return err
	}
	var busy [][2]uint64
	for _, m := range cur {
		busy = append(busy, [2]uint64{m.Start, m.End})
	}
	for _, v := range r.img.Process.VMAs {
		busy = append(busy, [2]uint64{v.Start, v.End})
	}
	at, err := holeFor(scratchLen, busy)
	if err != nil {
		return err
	}
	got, err := r.sys("mmap", unix.SYS_MMAP, at, scratchLen, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil {
		return err
	}
	r.scratch = got
	busy = append(busy, [2]uint64{got, got + scratchLen})

	// From now on system calls run at the syscall instruction of the vdso,
	// which stays mapped (and moves) while the husk's code goes away.
	special := specialAreas(cur)
	var vdso *proc.Mapping
	for i := range special {
		if special[i].Path == "[vdso]" {
			vdso = &special[i]
		}
	}
	if vdso == nil {
		return errors.New("the husk has no [vdso]")
	}
	off, err := syscallOffset()
	if err != nil {
		return err
	}
	r.p.SetGadget(vdso.Start + off)

	for _, m := range cur {
		if m.IsSpecial() || m.Start == r.scratch {
			continue
		}
		if _, err := r.sys("munmap", unix.SYS_MUNMAP, m.Start, m.End-m.Start); err != nil {
			return fmt.Errorf("unmap husk area %#x-%#x: %w", m.Start, m.End, err)
		}
	}
	if err := r.moveVDSO(special, busy, off); err != nil {
		return err
	}
	return r.mapAreas()
}

// syscallOffset finds a syscall instruction in this process's vdso, which
// is the same as the child's (checked by validate).
func syscallOffset() (uint64, error) {
	maps, err := proc.ReadMaps(os.Getpid())
	if err != nil {
		return 0, err
	}
	for _, m := range maps {
		if m.Path != "[vdso]" {
			continue
		}
		buf := make([]byte, m.End-m.Start)
		if _, err := ptrace.ReadMem(os.Getpid(), m.Start, buf); err != nil {
			return 0, err
		}
		for i := 0; i+1 < len(buf); i++ {
			if buf[i] == 0x0f && buf[i+1] == 0x05 {
				return uint64(i), nil
			}
		}
	}
	return 0, ptrace.ErrNoGadget
}

// moveVDSO moves the child's [vvar*] and [vdso] to the image's addresses,
// through a free range first if old and new places overlap.
func (r *restorer) moveVDSO(cur []proc.Mapping, busy [][2]uint64, gadgetOff uint64) error {
	var want []core.VMA
	for _, v := range r.img.Process.VMAs {
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			want = append(want, v)
		}
	}
	if len(want) != len(cur) {
		return &VDSOMismatchError{Reason: fmt.Sprintf("%d areas in the image, %d in the husk", len(want), len(cur))}
	}
	from := make([]uint64, len(cur))
	for i, m := range cur {
		from[i] = m.Start
	}
	move := func(to func(i int) uint64) error {
		for i, m := range cur {
			size := m.End - m.Start
			dst := to(i)
			if dst == from[i] {
				continue
			}
			if _, err := r.sys("mremap", unix.SYS_MREMAP, from[i], size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst); err != nil {
				return fmt.Errorf("move %s from %#x to %#x: %w", m.Path, from[i], dst, err)
			}
			from[i] = dst
			if m.Path == "[vdso]" {
				r.p.SetGadget(dst + gadgetOff)
			}
		}
		return nil
	}
	overlap := false
	for i := range cur {
		for j := range want {
			if cur[i].Start < want[j].End && want[j].Start < cur[i].End && cur[i].Start != want[j].Start {
				overlap = true
			}
		}
	}
	if overlap {
		span := cur[len(cur)-1].End - cur[0].Start
		tmp, err := holeFor(span, busy)
		if err != nil {
			return err
		}
		base := cur[0].Start
		if err := move(func(i int) uint64 { return tmp + cur[i].Start - base }); err != nil {
			return err
		}
	}
	return move(func(i int) uint64 { return want[i].Start })
}

// fileKey identifies a file for sharing one open fd among many mappings.
type fileKey struct {
	dev, ino uint64
	write    bool
}

// mapAreas maps every area of the image, writable where pages will be
// written into it (protect sets the final protections).
func (r *restorer) mapAreas() error {
	childFD := map[fileKey]int{}
	var temps []int
	defer func() {
		for _, fd := range temps {
			r.sys("close", unix.SYS_CLOSE, uint64(fd))
		}
	}()
	if err := r.openAgentPidfd(); err != nil {
		return err
	}
	for i := range r.img.Process.VMAs {
		v := &r.img.Process.VMAs[i]
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			continue
		}
		prot := v.Prot
		if v.Pages > 0 {
			prot |= unix.PROT_WRITE | unix.PROT_READ
		}
		flags := v.Flags&(unix.MAP_SHARED|unix.MAP_PRIVATE|unix.MAP_GROWSDOWN) | unix.MAP_FIXED
		fd := ^uint64(0)
		switch v.Kind {
		case core.VMAAnon, core.VMASharedAnon:
			flags |= unix.MAP_ANONYMOUS
		case core.VMAFile, core.VMASharedFile:
			write := v.Kind == core.VMASharedFile && v.Prot&unix.PROT_WRITE != 0
			key := fileKey{v.File.Dev, v.File.Ino, write}
			cfd, ok := childFD[key]
			if !ok {
				f, err := r.openMapped(v.File, write)
				if err != nil {
					return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
				}
				if cfd, err = r.install(f); err != nil {
					return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
				}
				childFD[key] = cfd
				temps = append(temps, cfd)
			}
			fd = uint64(cfd)
		}
		got, err := r.sys("mmap", unix.SYS_MMAP, v.Start, v.Len(), uint64(prot), uint64(flags), fd, v.Offset)
		if err != nil {
			return fmt.Errorf("map area %#x-%#x (%s %s): %w", v.Start, v.End, v.Kind, v.Name, err)
		}
		if got != v.Start {
			return fmt.Errorf("area %#x-%#x mapped at %#x", v.Start, v.End, got)
		}
	}
	return nil
}

// openAgentPidfd gives the child a pidfd for this agent, at a high fd
// number out of the way of the fds to restore.
func (r *restorer) openAgentPidfd() error {
	if _, err := r.sys("close_range", unix.SYS_CLOSE_RANGE, 0, 0xffffffff, 0); err != nil {
		return err
	}
	fd, err := r.sys("pidfd_open", unix.SYS_PIDFD_OPEN, uint64(os.Getpid()), 0)
	if err != nil {
		return err
	}
	high := 64
	for _, f := range r.img.Process.FDs {
		high = max(high, f.FD+16)
	}
	moved, err := r.sys("fcntl(F_DUPFD_CLOEXEC)", unix.SYS_FCNTL, fd, unix.F_DUPFD_CLOEXEC, uint64(high))
	if err != nil {
		return err
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, fd); err != nil {
		return err
	}
	r.agentFD = int(moved)
	return nil
}

// install pulls the agent's open file f into the child (pidfd_getfd) and
// returns its fd number there (the lowest free one, close-on-exec).
func (r *restorer) install(f *os.File) (int, error) {
	fd, err := r.sys("pidfd_getfd", unix.SYS_PIDFD_GETFD, uint64(r.agentFD), uint64(f.Fd()), 0)
	if err != nil {
		return 0, err
	}
	return int(fd), nil
}

// keep remembers a file the agent opened for the child.
func (r *restorer) keep(f *os.File) *os.File {
	r.files = append(r.files, f)
	return f
}

// openMapped opens a mapped file: the file itself, or for a deleted one, a
// copy made from the image.
func (r *restorer) openMapped(ref *core.FileRef, write bool) (*os.File, error) {
	if ref.Deleted {
		if f := r.deletedFiles[fileKey{ref.Dev, ref.Ino, false}]; f != nil {
			return f, nil
		}
		return nil, fmt.Errorf("deleted file %s mapped, but the image has no copy of it", ref.Path)
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(ref.Path, flag, 0)
	if err != nil {
		return nil, err
	}
	return r.keep(f), nil
}
