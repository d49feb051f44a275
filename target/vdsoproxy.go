package target

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/procmig/migrate/core/kernel"
)

// The vdso proxy. A process holds addresses inside its [vdso]: glibc
// resolves __vdso_clock_gettime and its friends once, at start, and calls
// them through pointers it keeps; a program may have taken such a
// pointer itself; the auxv's AT_SYSINFO_EHDR names the image. Code of one
// kernel's vdso finds its data ([vvar], [vvar_vclock]) at fixed offsets
// from itself, in that kernel's layout. On a kernel whose vdso is another
// (another build, other sizes or offsets), moving this kernel's vdso to
// the old address would run new code against pointers taken into old
// code.
//
// So the restore leaves this kernel's [vdso] and [vvar*] where they fit
// (near the old place), and maps at the old [vdso]'s address a proxy: a
// copy of the old vdso (ELF header, symbol tables and code, so a reader
// of AT_SYSINFO_EHDR finds the image it found before), each exported
// function's first bytes overwritten with a jump to the function of the
// same name in this kernel's vdso. The proxy is read-only and
// executable; it is an ordinary anonymous area of the process, which a
// later dump carries as memory. The old [vvar*] addresses get zero pages,
// read-only: only old vdso code (a thread caught inside a vdso function
// at the dump) reads them, and the kernel's vdso code finds a zero clock
// mode there (VDSO_CLOCKMODE_NONE) and falls back to the system call.
//
// A function of the old vdso that this kernel's lacks gets a stub that
// makes the system call the function stands for (the vdso functions of
// x86-64 take the arguments of their system call and return what it
// does). __vdso_getrandom always does: glibc keeps per-thread state whose
// size and layout it asked the old kernel's vdso for (vgetrandom_state),
// which this kernel's vdso could read otherwise. __vdso_sgx_enter_enclave
// (a kernel built with SGX has it, one without does not) returns -EFAULT,
// what it returns on a kernel with it when no enclave is there to enter
// (ENCLU faults): a kernel whose vdso lacks it has no SGX, so no process
// here has an enclave. A function of none of these is refused, named.
//
// Signals: an x86-64 signal frame returns through the handler's
// SA_RESTORER (glibc's __restore_rt), never through the vdso (the kernel
// refuses a 64-bit handler without SA_RESTORER; only 32-bit processes
// return through the vdso's __kernel_rt_sigreturn). The kernel's own
// pointer to the vdso (mm->context.vdso, which names [vdso] in the maps
// and serves the 32-bit signal return) follows this kernel's [vdso] when
// mremap moves it, so arch_prctl(ARCH_MAP_VDSO_64) is not needed: the
// husk's exec mapped this kernel's vdso already, and ARCH_MAP_VDSO_64 maps
// one only where none is.

// vdsoSyscalls are the system calls the vdso functions of x86-64 stand
// for: a function missing from this kernel's vdso makes its call.
var vdsoSyscalls = map[string]uint32{
	"clock_gettime": 228,
	"gettimeofday":  96,
	"time":          201,
	"getcpu":        309,
	"clock_getres":  229,
	"getrandom":     318,
}

// vdsoErrors are the functions a missing one of returns an error: -errno.
var vdsoErrors = map[string]int32{"sgx_enter_enclave": 14}

// alwaysSyscall are the functions whose proxy entry makes the system call
// even where this kernel's vdso has them (see above).
var alwaysSyscall = map[string]bool{"getrandom": true}

// vdsoBase is the name of a vdso function without its __vdso_ prefix.
func vdsoBase(name string) string { return strings.TrimPrefix(name, "__vdso_") }

// Encodings of the proxy's entries.
const (
	jmpRel32Len  = 5  // jmp rel32
	jmpAbsLen    = 12 // movabs rax, imm64; jmp rax
	syscallStLen = 8  // mov eax, imm32; syscall; ret
)

// UnservedError says a function of the old vdso is neither in this
// kernel's vdso nor one the proxy can make as a system call.
type UnservedError struct{ Names []string }

func (e *UnservedError) Error() string {
	return "this kernel's vdso lacks " + strings.Join(e.Names, ", ") + " of the old one"
}

// buildProxy returns the proxy of the old vdso image old, to be mapped at
// at, whose functions go to those of the new image mapped at newAt.
func buildProxy(old []byte, at uint64, cur []byte, newAt uint64) ([]byte, error) {
	oldFuncs, err := kernel.VDSOFuncs(old)
	if err != nil {
		return nil, fmt.Errorf("the image's vdso: %w", err)
	}
	newFuncs, err := kernel.VDSOFuncs(cur)
	if err != nil {
		return nil, fmt.Errorf("this kernel's vdso: %w", err)
	}
	here := map[string]uint64{}
	for _, f := range newFuncs {
		here[f.Name] = f.Off
	}
	// entry is what one offset of the old image becomes: one target
	// (names at one offset are aliases: clock_gettime and
	// __vdso_clock_gettime), or a system call.
	type entry struct {
		to      uint64 // absolute address in the new vdso, or 0
		syscall uint32
		errno   int32 // with to and syscall 0: return -errno
		names   []string
	}
	entries := map[uint64]*entry{}
	var offs []uint64
	var missing []string
	for _, f := range oldFuncs {
		var e entry
		base := vdsoBase(f.Name)
		if off, ok := here[f.Name]; ok && !alwaysSyscall[base] {
			e.to = newAt + off
		} else if nr, ok := vdsoSyscalls[base]; ok {
			e.syscall = nr
		} else if errno, ok := vdsoErrors[base]; ok {
			e.errno = errno
		} else {
			missing = append(missing, f.Name)
			continue
		}
		if prev, ok := entries[f.Off]; ok {
			if prev.to != e.to || prev.syscall != e.syscall || prev.errno != e.errno {
				return nil, &UnservedError{Names: []string{fmt.Sprintf("%s (an alias of %s, but not in this kernel's vdso)", f.Name, strings.Join(prev.names, ", "))}}
			}
			prev.names = append(prev.names, f.Name)
			continue
		}
		e.names = []string{f.Name}
		entries[f.Off] = &e
		offs = append(offs, f.Off)
	}
	if len(missing) > 0 {
		return nil, &UnservedError{Names: missing}
	}
	out := append([]byte(nil), old...)
	for i, off := range offs {
		e := entries[off]
		code := jumpCode(at+off, e.to, e.syscall)
		if e.errno != 0 {
			code = errnoCode(e.errno)
		}
		limit := uint64(len(out))
		if i+1 < len(offs) {
			limit = offs[i+1]
		}
		if off+uint64(len(code)) > limit {
			return nil, fmt.Errorf("the image's vdso: %s at +%#x leaves %d bytes for its %d-byte jump", e.names[0], off, limit-off, len(code))
		}
		copy(out[off:], code)
	}
	return out, nil
}

// errnoCode is code that returns -errno: mov rax, -errno; ret.
func errnoCode(errno int32) []byte {
	b := []byte{0x48, 0xc7, 0xc0, 0, 0, 0, 0, 0xc3}
	binary.LittleEndian.PutUint32(b[3:], uint32(-errno))
	return b
}

// jumpCode is the code placed at from: a jump to to, or, when to is 0,
// the system call nr.
func jumpCode(from, to uint64, nr uint32) []byte {
	if to == 0 {
		b := []byte{0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0xc3}
		binary.LittleEndian.PutUint32(b[1:], nr)
		return b
	}
	if rel := int64(to) - int64(from+jmpRel32Len); rel == int64(int32(rel)) {
		b := []byte{0xe9, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
		return b
	}
	b := []byte{0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xe0}
	binary.LittleEndian.PutUint64(b[2:], to)
	return b
}
