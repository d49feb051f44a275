package source

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/osthread"
)

// LandlockError refuses a thread sandboxed by Landlock. Nothing shows its
// rules from outside, so they cannot be carried; restored without them
// the process would reach files, ports and processes the original could
// not: more than it had, which a restore must never give.
type LandlockError struct {
	PID, TID int
}

func (e *LandlockError) Error() string {
	return fmt.Sprintf("process %d: thread %d is sandboxed by Landlock (landlock_restrict_self), whose rules migrate cannot read or carry: restored without them it would have more access than it has", e.PID, e.TID)
}

// Landlock is found by what it does, as nothing in /proc shows it: a
// thread in a Landlock domain may not inspect a process outside its
// domain (the LSM's ptrace_access_check: the caller's domain must be an
// ancestor of the target's, or the caller unsandboxed), so kcmp(2) from
// the thread against a process that is in no domain fails with EPERM.
// That process is a probe migrate starts (probeProgram) with the
// thread's real user and group IDs and no capabilities, in its user and
// PID namespaces: every other check kcmp's PTRACE_MODE_READ_REALCREDS makes
// then passes (the same real IDs, the probe's empty permitted set a
// subset of any, the probe dumpable: it ran exec with its IDs equal;
// Yama looks at attaching only), so EPERM is Landlock's alone. (An
// AppArmor or SELinux label that could deny it too is refused before
// this, see checkSecurityLabel.) A first kcmp of the process against
// itself, which no ptrace check refuses, tells whether kcmp can run there
// at all (a kernel without CONFIG_KCMP): if not, the test cannot be made.
// (The process's seccomp filters do not judge injected calls:
// PTRACE_O_SUSPEND_SECCOMP, without which a process under seccomp is
// refused.)

// landlockABI is the Landlock ABI version of this kernel, 0 if Landlock
// is not enabled (then no process can be sandboxed by it).
var landlockABI = sync.OnceValue(func() int {
	const createRulesetVersion = 1 // LANDLOCK_CREATE_RULESET_VERSION
	v, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, createRulesetVersion)
	if errno != 0 {
		return 0
	}
	return int(v)
})

const kcmpVM = 1 // KCMP_VM

// landlockUnchecked says why process pid cannot be tested for Landlock
// here, or "" if it can: the probe must be in its user namespace, and
// migrate can put it only in its own (a process cannot enter another
// user namespace once it has threads).
func landlockUnchecked(pid int) string {
	mine, err1 := nsLink("self", "user")
	its, err2 := nsLink(strconv.Itoa(pid), "user")
	if err1 != nil || err2 != nil || mine != its {
		return "in a user namespace of its own"
	}
	return ""
}

// landlockProbe is a running probe.
type landlockProbe struct {
	cmd *exec.Cmd
	// nspid is its PID in the PID namespace it was started in.
	nspid int
	// stop ends it; done is closed once it is reaped.
	stop chan struct{}
	done chan error
}

// probePIDs are the probes running, by PID here: not processes of the
// namespaces they are in (processesIn leaves them out), for the time they
// live.
var probePIDs sync.Map

// probeStarting is held (write) while a probe is started, from before its
// fork until probePIDs has it, and (read) by processesIn while it looks:
// a probe is in its namespace from the fork on, and was taken for a
// process that entered a container's PID namespace (checkStrays refused
// the container; 3 of 25 stressed runs of TestContainerLiveChurn).
var probeStarting sync.RWMutex

// isLandlockProbe says whether pid is a probe of migrate's.
func isLandlockProbe(pid int) bool {
	_, ok := probePIDs.Load(pid)
	return ok
}

// landlockProbes are the probes of Landlock tests, one for each PID
// namespace and real user and group tested.
type landlockProbes struct {
	mu sync.Mutex // processes are tested on several tracers at once
	m  map[probeKey]*landlockProbe
}

type probeKey struct {
	pidns    string // as /proc/PID/ns/pid names it
	uid, gid uint32
}

// get returns the probe in the PID namespace of process pid with real
// IDs uid and gid, started if need be.
func (lp *landlockProbes) get(pid int, uid, gid uint32) (*landlockProbe, error) {
	ns, err := nsLink(strconv.Itoa(pid), "pid")
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.m == nil {
		lp.m = map[probeKey]*landlockProbe{}
	}
	k := probeKey{ns, uid, gid}
	if pr := lp.m[k]; pr != nil {
		return pr, nil
	}
	pr, err := startLandlockProbe(pid, ns, uid, gid)
	if err != nil {
		return nil, err
	}
	lp.m[k] = pr
	return pr, nil
}

// prepare starts the probes the threads of process pid need, if it can
// be tested: before it is stopped, so that it is not stopped for longer.
// What fails here is met again by checkLandlock.
func (lp *landlockProbes) prepare(pid int) {
	if landlockABI() <= 0 || landlockUnchecked(pid) != "" {
		return
	}
	tids, _ := proc.ReadTIDs(pid)
	for _, tid := range tids {
		if st, err := proc.ReadTaskStatus(pid, tid); err == nil {
			lp.get(pid, st.UID[0], st.GID[0])
		}
	}
}

// close ends the probes.
func (lp *landlockProbes) close() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	for k, pr := range lp.m {
		close(pr.stop)
		<-pr.done
		delete(lp.m, k)
	}
}

// checkLandlock refuses process p (stopped by its tracer) if one of its
// threads is sandboxed by Landlock (LandlockError). It runs one injected
// kcmp per thread, and one more per process, against probes of lp. It
// says why if it could not test the process (unchecked), which is not an
// error.
func checkLandlock(p *ptrace.Proc, lp *landlockProbes) (unchecked string, err error) {
	if landlockABI() <= 0 {
		return "", nil
	}
	if why := landlockUnchecked(p.PID); why != "" {
		return why, nil
	}
	// The PIDs kcmp takes are those of the process's PID namespace.
	st, err := proc.ReadStatus(p.PID)
	if err != nil || len(st.NSpid) == 0 {
		return "", fmt.Errorf("process %d: its PID in its namespace: %v", p.PID, err)
	}
	self := uint64(st.NSpid[len(st.NSpid)-1])
	// kcmp at all: the process against itself.
	if _, err := p.Syscall(p.Leader(), "kcmp", unix.SYS_KCMP, self, self, kcmpVM, 0, 0); err != nil {
		var se *ptrace.SyscallError
		if errors.As(err, &se) {
			return fmt.Sprintf("kcmp fails in it (%v): a kernel without CONFIG_KCMP?", se.Errno), nil
		}
		return "", err
	}
	for _, th := range p.Threads {
		st, err := proc.ReadTaskStatus(p.PID, th.TID)
		if err != nil {
			return "", fmt.Errorf("thread %d: %w", th.TID, err)
		}
		uid, gid := st.UID[0], st.GID[0]
		pr, err := lp.get(p.PID, uid, gid)
		if err != nil {
			return "", err
		}
		_, err = p.Syscall(th, "kcmp", unix.SYS_KCMP, self, uint64(pr.nspid), kcmpVM, 0, 0)
		var se *ptrace.SyscallError
		switch {
		case err == nil:
		case errors.As(err, &se) && se.Errno == unix.EPERM:
			return "", &LandlockError{PID: p.PID, TID: th.TID}
		default:
			return "", fmt.Errorf("thread %d: Landlock test (kcmp against a probe as uid %d gid %d): %w", th.TID, uid, gid, err)
		}
	}
	return "", nil
}

// startLandlockProbe starts a process in no Landlock domain, in the PID
// namespace ns of process pid, with real, effective and saved IDs uid
// and gid, no supplementary groups and no capabilities (as uid 0 too:
// the probe drops them first). It is a program of its own (probeProgram),
// run from a memfd: no file of the host is needed. It returns once the
// probe runs with no capabilities (Start returns once it ran exec:
// before, it was a copy of migrate, not dumpable once its IDs changed,
// and kcmp against it would fail for that).
//
// The probe is started from an OS thread of its own, which enters ns
// first (its children are born there) and lives as long as the probe:
// the probe dies with it (its PR_SET_PDEATHSIG), so that none is left
// behind in a container if migrate dies.
func startLandlockProbe(pid int, ns string, uid, gid uint32) (*landlockProbe, error) {
	fd, err := unix.MemfdCreate("migrate-landlock-probe", unix.MFD_CLOEXEC|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3: no MFD_EXEC, executable anyway
		fd, err = unix.MemfdCreate("migrate-landlock-probe", unix.MFD_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("Landlock test: memfd for the probe: %w", err)
	}
	f := os.NewFile(uintptr(fd), "migrate-landlock-probe")
	defer f.Close()
	if _, err := f.Write(probeProgram()); err != nil {
		return nil, fmt.Errorf("Landlock test: memfd for the probe: %w", err)
	}
	mine, _ := nsLink("self", "pid")
	pr := &landlockProbe{stop: make(chan struct{}), done: make(chan error, 1)}
	started := make(chan error, 1)
	osthread.Go(func() {
		if ns != mine {
			nsfd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/pid", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				err = unix.Setns(nsfd, unix.CLONE_NEWPID)
				unix.Close(nsfd)
			}
			if err != nil {
				started <- fmt.Errorf("Landlock test: enter the PID namespace of process %d: %w", pid, err)
				return
			}
		}
		// The child runs exec with the fd still open: close-on-exec
		// closes it after the kernel opened the program.
		c := exec.Command(fmt.Sprintf("/proc/self/fd/%d", fd))
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		probeStarting.Lock()
		if err := c.Start(); err != nil {
			probeStarting.Unlock()
			started <- fmt.Errorf("Landlock test: start a probe as uid %d gid %d: %w", uid, gid, err)
			return
		}
		probePIDs.Store(c.Process.Pid, true)
		probeStarting.Unlock()
		pr.cmd = c
		// Reaped as soon as it dies: the end of the PID namespace it is
		// in kills it too, and the namespace's init waits, as it exits,
		// until every task of the namespace is reaped.
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		started <- nil
		var err error
		select {
		case <-pr.stop:
			c.Process.Kill()
			err = <-exited
		case err = <-exited:
		}
		probePIDs.Delete(c.Process.Pid)
		pr.done <- err
	})
	if err := <-started; err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		st, err := proc.ReadStatus(pr.cmd.Process.Pid)
		if err == nil && st.CapPrm == 0 && st.CapEff == 0 && st.UID[0] == uid && st.GID[0] == gid && len(st.NSpid) > 0 {
			pr.nspid = st.NSpid[len(st.NSpid)-1]
			return pr, nil
		}
		if err != nil || time.Now().After(deadline) {
			close(pr.stop)
			werr := <-pr.done
			return nil, fmt.Errorf("Landlock test: the probe as uid %d gid %d did not drop its capabilities (%v, %v)", uid, gid, err, werr)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// probeCode is the probe's code (x86-64): prctl(PR_SET_PDEATHSIG,
// SIGKILL), so that it dies with the thread that started it; capset(2) to
// no capability at all (exit(1) if that fails); then pause(2) for ever.
// (Go's own Pdeathsig cannot be used: its child checks its parent is the
// same after the prctl, and a child in another PID namespace sees none.)
//
//	mov  edi, 1                   ; PR_SET_PDEATHSIG
//	mov  esi, 9                   ; SIGKILL
//	mov  eax, 157                 ; prctl
//	syscall
//	sub  rsp, 64
//	mov  dword [rsp], 0x20080522  ; _LINUX_CAPABILITY_VERSION_3
//	xor  eax, eax
//	mov  dword [rsp+4], eax       ; pid 0: this process
//	mov  qword [rsp+8], rax       ; the two data structs: all zero
//	mov  qword [rsp+16], rax
//	mov  qword [rsp+24], rax
//	mov  rdi, rsp
//	lea  rsi, [rsp+8]
//	mov  eax, 126                 ; capset
//	syscall
//	test rax, rax
//	jnz  fail
//
// again:
//
//	mov  eax, 34                  ; pause
//	syscall
//	jmp  again
//
// fail:
//
//	mov  edi, 1
//	mov  eax, 231                 ; exit_group
//	syscall
var probeCode = []byte{
	0xbf, 0x01, 0x00, 0x00, 0x00, 0xbe, 0x09, 0x00, 0x00, 0x00, 0xb8, 0x9d,
	0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xec, 0x40, 0xc7, 0x04, 0x24,
	0x22, 0x05, 0x08, 0x20, 0x31, 0xc0, 0x89, 0x44, 0x24, 0x04, 0x48, 0x89,
	0x44, 0x24, 0x08, 0x48, 0x89, 0x44, 0x24, 0x10, 0x48, 0x89, 0x44, 0x24,
	0x18, 0x48, 0x89, 0xe7, 0x48, 0x8d, 0x74, 0x24, 0x08, 0xb8, 0x7e, 0x00,
	0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, 0x09, 0xb8, 0x22, 0x00,
	0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xb8,
	0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
}

// probeProgram is the probe: a static ELF executable of one loadable
// segment, its ELF header, its program header and probeCode, read and
// run at probeBase.
var probeProgram = sync.OnceValue(func() []byte {
	const (
		probeBase = 0x400000
		ehsize    = 64
		phsize    = 56
	)
	le := binary.LittleEndian
	size := uint64(ehsize + phsize + len(probeCode))
	b := make([]byte, 0, size)
	b = append(b, 0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* little-endian */, 1 /* version */, 0 /* System V */)
	b = append(b, make([]byte, 8)...)
	b = le.AppendUint16(b, 2)                       // ET_EXEC
	b = le.AppendUint16(b, 62)                      // EM_X86_64
	b = le.AppendUint32(b, 1)                       // EV_CURRENT
	b = le.AppendUint64(b, probeBase+ehsize+phsize) // entry
	b = le.AppendUint64(b, ehsize)                  // program headers' offset
	b = le.AppendUint64(b, 0)                       // no section headers
	b = le.AppendUint32(b, 0)                       // flags
	b = le.AppendUint16(b, ehsize)
	b = le.AppendUint16(b, phsize)
	b = le.AppendUint16(b, 1) // one program header
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, 1) // PT_LOAD
	b = le.AppendUint32(b, 5) // PF_R|PF_X
	b = le.AppendUint64(b, 0) // from the start of the file
	b = le.AppendUint64(b, probeBase)
	b = le.AppendUint64(b, probeBase)
	b = le.AppendUint64(b, size)
	b = le.AppendUint64(b, size)
	b = le.AppendUint64(b, 0x1000)
	return append(b, probeCode...)
})
