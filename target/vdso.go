package target

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// vdsoServed says whether the vdso of a process laid out as vmas works
// here: this kernel's is the same (moved to the old place), or a proxy of
// the image's can send each of its functions to this kernel's
// (vdsoproxy.go). Otherwise a *VDSOMismatchError says why.
func vdsoServed(vmas []core.VMA) error {
	same := checkVDSO(vmas)
	var mismatch *VDSOMismatchError
	if same == nil || !errors.As(same, &mismatch) {
		return same
	}
	if _, err := vdsoProxyFor(vmas); errors.Is(err, core.ErrInconsistent) {
		return err
	} else if err != nil {
		return unserved(mismatch.Reason+"; and no proxy of the image's vdso serves it", err)
	}
	return nil
}

// unserved is the refusal of a proxy that cannot be built (err), with
// the functions this kernel's vdso lacks, if that is why.
func unserved(reason string, err error) *VDSOMismatchError {
	e := &VDSOMismatchError{Reason: reason + ": " + err.Error()}
	var ue *UnservedError
	if errors.As(err, &ue) {
		e.Missing = ue.Names
	}
	return e
}

// vdsoProxyFor builds the proxy of the image's vdso (among vmas) for this
// kernel's vdso where it is in this process (the addresses in the proxy's
// jumps are the restore's: this checks that it can be built).
func vdsoProxyFor(vmas []core.VMA) ([]byte, error) {
	old, err := imageVDSOCode(vmas)
	if err != nil {
		return nil, err
	}
	at, cur, err := kernel.OwnVDSO()
	if err != nil {
		return nil, err
	}
	return buildProxy(old.Code, old.Start, cur, at, mapsEnclave(vmas))
}

// imageVDSOCode is the image's [vdso] area (among vmas), with its code,
// which matches its hash.
func imageVDSOCode(vmas []core.VMA) (*core.VMA, error) {
	old := imageVDSO(vmas)
	if old == nil {
		return nil, errors.New("the image has no [vdso]")
	}
	if len(old.Code) == 0 {
		return nil, errors.New("the image holds no copy of its vdso (dumped by an older migrate)")
	}
	if sum := sha256.Sum256(old.Code); hex.EncodeToString(sum[:]) != old.Hash {
		return nil, fmt.Errorf("%w: the image's copy of its vdso does not match its hash", core.ErrInconsistent)
	}
	return old, nil
}

// mapsEnclave says whether a process laid out as vmas maps an SGX enclave.
func mapsEnclave(vmas []core.VMA) bool {
	for _, v := range vmas {
		if v.File != nil && strings.HasPrefix(v.File.Path, "/dev/sgx") {
			return true
		}
	}
	return false
}

// imageVDSO is the [vdso] area among vmas, or nil.
func imageVDSO(vmas []core.VMA) *core.VMA {
	for i := range vmas {
		if vmas[i].Kind == core.VMAVDSO {
			return &vmas[i]
		}
	}
	return nil
}

// proxyVDSO lays out the vdso of a process whose image's vdso is not this
// kernel's (or, with RestoreOptions.VDSOProxy, even if it is): this
// kernel's [vdso] and [vvar*] (the husk's, cur) go to a free range above
// the image's old ones, the old [vdso]'s range gets the proxy, the old
// [vvar*] ranges zero pages, read-only (see vdsoproxy.go).
//
// Preconditions: the husk's other areas are unmapped; busy holds every
// range in use or to be used (the image's areas, the scratch area, cur).
func (r *restorer) proxyVDSO(cur []proc.Mapping, busy [][2]uint64, gadgetOff uint64) error {
	old, err := imageVDSOCode(r.proc.VMAs)
	if err != nil {
		return unserved("no proxy of the image's vdso", err)
	}
	if len(cur) == 0 {
		return &VDSOMismatchError{Reason: "the husk has no [vdso]"}
	}
	lo, hi := old.Start, old.End
	for _, v := range r.proc.VMAs {
		if v.Kind == core.VMAVVar {
			lo, hi = min(lo, v.Start), max(hi, v.End)
		}
	}
	base, span := cur[0].Start, cur[len(cur)-1].End-cur[0].Start
	at, err := holeAbove(hi, span, busy)
	if err != nil {
		return err
	}
	var vdsoAt uint64
	for _, m := range cur {
		dst := at + m.Start - base
		if dst != m.Start {
			if _, err := r.sys("mremap", unix.SYS_MREMAP, m.Start, m.End-m.Start, m.End-m.Start, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst); err != nil {
				return fmt.Errorf("move %s from %#x to %#x: %w", m.Path, m.Start, dst, err)
			}
		}
		if m.Path == "[vdso]" {
			vdsoAt = dst
			r.p.SetGadget(dst + gadgetOff)
		}
	}
	r.vdsoHere = addrRange{at, at + span}
	_, img, err := kernel.OwnVDSO()
	if err != nil {
		return err
	}
	proxy, err := buildProxy(old.Code, old.Start, img, vdsoAt, mapsEnclave(r.proc.VMAs))
	if err != nil {
		return unserved("no proxy of the image's vdso serves it", err)
	}
	for _, v := range r.proc.VMAs {
		if v.Kind != core.VMAVVar {
			continue
		}
		if _, err := r.sys("mmap", unix.SYS_MMAP, v.Start, v.Len(), unix.PROT_READ,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0); err != nil {
			return fmt.Errorf("zero pages in place of %s at %#x: %w", v.Name, v.Start, err)
		}
	}
	if _, err := r.sys("mmap", unix.SYS_MMAP, old.Start, old.Len(), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0); err != nil {
		return fmt.Errorf("vdso proxy at %#x: %w", old.Start, err)
	}
	if _, err := ptrace.WriteMem(r.pid, old.Start, proxy); err != nil {
		return fmt.Errorf("write the vdso proxy at %#x: %w", old.Start, err)
	}
	if _, err := r.sys("mprotect", unix.SYS_MPROTECT, old.Start, old.Len(), uint64(old.Prot)); err != nil {
		return fmt.Errorf("vdso proxy at %#x: %w", old.Start, err)
	}
	r.log.Info("vdso proxy", "pid", r.pid, "old", fmt.Sprintf("%#x-%#x", lo, hi), "vdso", fmt.Sprintf("%#x", vdsoAt))
	return nil
}

// threadsOutOfVDSO refuses a process laid out with the vdso proxy that
// has a thread dumped inside the old vdso's code, not at a system call to
// run anew: that code would read zero pages where its kernel's data was
// (time() would return 0). The dump steps threads out of the vdso, but
// not those of a process stopped by job control, nor one still inside
// after its bound (source's stepOutOfVDSO).
func (r *restorer) threadsOutOfVDSO() error {
	old := imageVDSO(r.proc.VMAs)
	if r.vdsoHere == (addrRange{}) || old == nil {
		return nil
	}
	for _, t := range r.proc.Threads {
		if rip := t.Regs.RIP; rip >= old.Start && rip < old.End && t.Restart == "" {
			return &VDSOMismatchError{Reason: fmt.Sprintf("thread %d was dumped inside the old vdso's code (at +%#x), which cannot run on this kernel's data", t.TID, rip-old.Start)}
		}
	}
	return nil
}

// holeAbove finds n free bytes (none of busy) from the first 64 KiB
// boundary at or above from, below the top of the user address space, or
// anywhere (holeFor).
func holeAbove(from, n uint64, busy [][2]uint64) (uint64, error) {
	const top = 1<<47 - 4096
	at := (from + 0xffff) &^ 0xffff
	for again := true; again && at+n <= top; {
		again = false
		for _, b := range busy {
			if b[0] < at+n && at < b[1] {
				at, again = (b[1]+0xffff)&^0xffff, true
			}
		}
	}
	if at+n <= top {
		return at, nil
	}
	return holeFor(n, busy)
}
