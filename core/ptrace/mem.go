package ptrace

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ReadMem reads len(buf) bytes at addr of process pid with
// process_vm_readv. It fails on pages the process cannot read.
func ReadMem(pid int, addr uint64, buf []byte) (int, error) {
	n, err := raw.ReadRemote(pid, buf, addr)
	if err != nil {
		return n, fmt.Errorf("process_vm_readv %d at %#x+%d: %w", pid, addr, len(buf), err)
	}
	return n, nil
}

// ReadMemv reads the remote areas of process pid, one after the other,
// into buf with one process_vm_readv (at most IOV_MAX areas). It returns
// the bytes read: fewer than asked when an area is not readable (then the
// areas before it were read whole).
func ReadMemv(pid int, buf []byte, remote []unix.RemoteIovec) (int, error) {
	if len(buf) == 0 || len(remote) == 0 {
		return 0, nil
	}
	n, err := raw.ReadRemotev(pid, buf, remote)
	if err != nil {
		return n, fmt.Errorf("process_vm_readv %d of %d areas from %#x: %w", pid, len(remote), remote[0].Base, err)
	}
	return n, nil
}

// WriteMem writes buf at addr of process pid with process_vm_writev. It
// fails on pages that are not writable.
func WriteMem(pid int, addr uint64, buf []byte) (int, error) {
	n, err := raw.WriteRemote(pid, buf, addr)
	if err != nil {
		return n, fmt.Errorf("process_vm_writev %d at %#x+%d: %w", pid, addr, len(buf), err)
	}
	return n, nil
}

// WriteMemv writes the local buffers, one after the other, to the remote
// areas of process pid with one process_vm_writev (at most IOV_MAX of
// each). It fails unless every byte was written: a remote area that is not
// writable fails the call, naming the first byte not written.
func WriteMemv(pid int, local [][]byte, remote []unix.RemoteIovec) error {
	want := 0
	for _, r := range remote {
		want += r.Len
	}
	if want == 0 {
		return nil
	}
	n, err := raw.WriteRemotev(pid, local, remote)
	if err == nil && n < want {
		err = unix.EFAULT
	}
	if err != nil {
		at := remote[0].Base
		for _, r := range remote {
			if n < r.Len {
				at = r.Base + uintptr(max(n, 0))
				break
			}
			n -= r.Len
		}
		return fmt.Errorf("process_vm_writev %d of %d areas from %#x: at %#x: %w", pid, len(remote), remote[0].Base, at, err)
	}
	return nil
}

// ReadMemForce reads through /proc/PID/mem, which also reads pages the
// process itself may not read (PROT_NONE, execute-only).
func ReadMemForce(pid int, addr uint64, buf []byte) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(buf, int64(addr))
}

// WriteMemForce writes through /proc/PID/mem, which also writes read-only
// pages (copy-on-write, as a debugger's breakpoint would).
func WriteMemForce(pid int, addr uint64, buf []byte) (int, error) {
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.WriteAt(buf, int64(addr))
}
