package ptrace

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ErrNoGadget means no syscall instruction was found in the tracee.
var ErrNoGadget = errors.New("no syscall instruction found in the tracee's [vdso] or code")

// SyscallError is a failed injected system call.
type SyscallError struct {
	PID   int
	Name  string
	Errno unix.Errno
}

func (e *SyscallError) Error() string {
	return fmt.Sprintf("injected %s in process %d: %v", e.Name, e.PID, e.Errno)
}

func (e *SyscallError) Unwrap() error { return e.Errno }

// SetGadget tells the Proc where a syscall instruction (0f 05) lies in the
// tracee's address space.
func (p *Proc) SetGadget(addr uint64) { p.gadget = addr }

// Gadget returns the address injected system calls run at.
func (p *Proc) Gadget() uint64 { return p.gadget }

// FindGadget looks for a syscall instruction in the tracee's [vdso], then in
// its other executable mappings, and remembers it for Syscall.
func (p *Proc) FindGadget() error {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.PID))
	if err != nil {
		return err
	}
	var vdso, exec []Area
	for _, l := range strings.Split(string(maps), "\n") {
		var a Area
		var perms string
		if n, _ := fmt.Sscanf(l, "%x-%x %s", &a.Start, &a.End, &perms); n != 3 || !strings.Contains(perms, "x") {
			continue
		}
		if strings.HasSuffix(l, "[vdso]") {
			vdso = append(vdso, a)
		} else if !strings.HasSuffix(l, "[vsyscall]") {
			exec = append(exec, a)
		}
	}
	return p.FindGadgetIn(append(vdso, exec...))
}

// Area is a range of the tracee's addresses, [Start, End).
type Area struct{ Start, End uint64 }

// FindGadgetIn is FindGadget in the given executable areas of the tracee
// (its layout, read by the caller), in their order.
func (p *Proc) FindGadgetIn(areas []Area) error {
	for _, a := range areas {
		n := min(a.End-a.Start, 1<<20)
		buf := make([]byte, n)
		if _, err := ReadMemForce(p.PID, a.Start, buf); err != nil {
			continue
		}
		if i := bytes.Index(buf, syscallInsn); i >= 0 {
			p.gadget = a.Start + uint64(i)
			return nil
		}
	}
	return ErrNoGadget
}

// Syscall runs system call nr with args in thread th of the stopped tracee
// and returns its result. The thread's registers are restored afterwards.
// A signal that arrives meanwhile is kept in th.Stolen and given back on
// detach. Fork events (clone3 in a process traced with PTRACE_O_TRACEFORK)
// are passed over; the child's PID is the return value.
func (p *Proc) Syscall(th *Thread, name string, nr uintptr, args ...uint64) (uint64, error) {
	if p.gadget == 0 {
		return 0, ErrNoGadget
	}
	if len(args) > 6 {
		return 0, fmt.Errorf("syscall %s: %d arguments", name, len(args))
	}
	var ret uint64
	err := p.t.Do(func() error {
		var err error
		ret, err = p.syscallLocked(th, name, nr, args...)
		return err
	})
	if err != nil {
		return 0, err
	}
	if e := int64(ret); e < 0 && e > -4096 {
		return 0, &SyscallError{PID: p.PID, Name: name, Errno: unix.Errno(-e)}
	}
	return ret, nil
}

// syscallLocked is Syscall on the tracer thread: it returns the raw result
// (a negative errno is not turned into an error).
func (p *Proc) syscallLocked(th *Thread, name string, nr uintptr, args ...uint64) (uint64, error) {
	var a [6]uint64
	copy(a[:], args)
	var ret uint64
	err := func() error {
		saved := th.Regs
		r := saved
		setSyscall(&r, p.gadget, nr, a)
		if err := unix.PtraceSetRegs(th.TID, &r); err != nil {
			return fmt.Errorf("inject %s: set registers of %d: %w", name, th.TID, err)
		}
		// Whatever happens next, the thread gets its registers back.
		th.regsChanged = true
		for phase := 0; phase < 2; {
			if err := raw.Ptrace(unix.PTRACE_SYSCALL, th.TID, 0, 0); err != nil {
				return fmt.Errorf("inject %s: resume %d: %w", name, th.TID, err)
			}
			th.ranInjected = true
			ws, err := wait(th.TID)
			if err != nil {
				return fmt.Errorf("inject %s: wait for %d: %w", name, th.TID, err)
			}
			if ws.Exited() || ws.Signaled() {
				th.TID = 0
				return fmt.Errorf("inject %s: thread exited (%v)", name, ws)
			}
			if !ws.Stopped() {
				continue
			}
			switch {
			case ws.StopSignal() == unix.SIGTRAP|0x80:
				phase++
			case event(ws) > 0:
				// Fork, clone or an event stop: go on.
			default:
				if si, err := raw.PtraceGetSiginfo(th.TID); err == nil {
					th.Stolen = append(th.Stolen, si)
				}
			}
		}
		var out unix.PtraceRegs
		if err := unix.PtraceGetRegs(th.TID, &out); err != nil {
			return fmt.Errorf("inject %s: get registers of %d: %w", name, th.TID, err)
		}
		ret = syscallResult(&out)
		if err := unix.PtraceSetRegs(th.TID, &saved); err != nil {
			return fmt.Errorf("inject %s: restore registers of %d: %w", name, th.TID, err)
		}
		return nil
	}()
	return ret, err
}
