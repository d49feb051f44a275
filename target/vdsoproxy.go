package target

import (
	"bytes"
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
// (a kernel built with SGX has it, one without does not) returns -EFAULT
// for a process without an enclave (enclaveOnly). Any other function is
// refused, named.
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

// alwaysSyscall are the functions whose proxy entry makes the system call
// even where this kernel's vdso has them (see above).
var alwaysSyscall = map[string]bool{"getrandom": true}

// enclaveOnly are the functions that do something only for a process with
// an SGX enclave mapped (/dev/sgx_enclave): the vdso of a kernel built
// with SGX support has __vdso_sgx_enter_enclave, others do not. Without
// an enclave the call can only fail, and the proxy's entry fails it
// (-EFAULT, what the vdso returns when ENCLU faults, no enclave being
// there to enter; a kernel whose vdso lacks it has no SGX, so no process
// here has an enclave); with one, a kernel lacking it is refused.
var enclaveOnly = map[string]bool{"sgx_enter_enclave": true}

// vdsoBase is the name of a vdso function without its __vdso_ prefix.
func vdsoBase(name string) string { return strings.TrimPrefix(name, "__vdso_") }

// jmpRel32Len is the length of a jmp rel32.
const jmpRel32Len = 5

// UnservedError says a function of the old vdso is neither in this
// kernel's vdso nor one the proxy can make as a system call.
type UnservedError struct{ Names []string }

func (e *UnservedError) Error() string {
	return "this kernel's vdso lacks " + strings.Join(e.Names, ", ") + " of the old one"
}

// buildProxy returns the proxy of the old vdso image old, to be mapped at
// at, whose functions go to those of the new image cur mapped at newAt.
// enclave says whether the process maps an SGX enclave.
func buildProxy(old []byte, at uint64, cur []byte, newAt uint64, enclave bool) ([]byte, error) {
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
	// The code of each offset of the old image (names at one offset are
	// aliases: clock_gettime and __vdso_clock_gettime).
	codes := map[uint64][]byte{}
	names := map[uint64]string{}
	var offs []uint64
	var missing []string
	for _, f := range oldFuncs {
		code := entryCode(f.Name, at+f.Off, here, newAt, enclave)
		if code == nil {
			missing = append(missing, f.Name)
			continue
		}
		if prev, ok := codes[f.Off]; ok {
			if !bytes.Equal(prev, code) {
				return nil, &UnservedError{Names: []string{fmt.Sprintf("%s (an alias of %s, but not in this kernel's vdso)", f.Name, names[f.Off])}}
			}
			continue
		}
		codes[f.Off], names[f.Off] = code, f.Name
		offs = append(offs, f.Off)
	}
	if len(missing) > 0 {
		return nil, &UnservedError{Names: missing}
	}
	out := append([]byte(nil), old...)
	for i, off := range offs {
		code := codes[off]
		limit := uint64(len(out))
		if i+1 < len(offs) {
			limit = offs[i+1]
		}
		if off+uint64(len(code)) > limit {
			return nil, fmt.Errorf("the image's vdso: %s at +%#x leaves %d bytes for its %d-byte entry", names[off], off, limit-off, len(code))
		}
		copy(out[off:], code)
	}
	return out, nil
}

// entryCode is the code of the proxy's entry at from for the old vdso's
// function name: a jump to this kernel's function of that name (here:
// their offsets in this kernel's vdso, mapped at newAt), its system call,
// or a failure (enclaveOnly); nil if none of them serves it.
func entryCode(name string, from uint64, here map[string]uint64, newAt uint64, enclave bool) []byte {
	base := vdsoBase(name)
	if off, ok := here[name]; ok && !alwaysSyscall[base] {
		return jumpCode(from, newAt+off)
	}
	if nr, ok := vdsoSyscalls[base]; ok {
		// mov eax, nr; syscall; ret
		b := []byte{0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0xc3}
		binary.LittleEndian.PutUint32(b[1:], nr)
		return b
	}
	if enclaveOnly[base] && !enclave {
		// mov rax, -EFAULT (sign-extended); ret
		return []byte{0x48, 0xc7, 0xc0, 0xf2, 0xff, 0xff, 0xff, 0xc3}
	}
	return nil
}

// jumpCode is a jump from from to to: jmp rel32 where it reaches, else
// movabs rax, to; jmp rax (rax is free at a function's entry).
func jumpCode(from, to uint64) []byte {
	if rel := int64(to) - int64(from+jmpRel32Len); rel == int64(int32(rel)) {
		b := []byte{0xe9, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
		return b
	}
	b := []byte{0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xe0}
	binary.LittleEndian.PutUint64(b[2:], to)
	return b
}
