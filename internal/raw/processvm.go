//go:build linux

package raw

import "golang.org/x/sys/unix"

// ReadRemote reads len(buf) bytes at addr of process pid with one
// process_vm_readv. It fails on pages the process itself cannot read, and
// returns fewer bytes than asked when the area ends in such pages.
func ReadRemote(pid int, buf []byte, addr uint64) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	return ReadRemotev(pid, buf, []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}})
}

// ReadRemotev reads the remote areas of process pid, one after the other,
// into buf with one process_vm_readv (at most IOV_MAX areas). It returns the
// bytes read: fewer than asked when an area is not readable (then the areas
// before it were read whole).
func ReadRemotev(pid int, buf []byte, remote []unix.RemoteIovec) (int, error) {
	if len(buf) == 0 || len(remote) == 0 {
		return 0, nil
	}
	return unix.ProcessVMReadv(pid, localIovec(buf), remote, 0)
}

// WriteRemote writes buf at addr of process pid with one process_vm_writev.
// It fails on pages the process itself cannot write.
func WriteRemote(pid int, buf []byte, addr uint64) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	return unix.ProcessVMWritev(pid, localIovec(buf), []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}, 0)
}

// localIovec is the one local iovec that covers buf.
func localIovec(buf []byte) []unix.Iovec {
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	return local
}

// WriteRemotev writes the local buffers, one after the other, to the remote
// areas of process pid, one after the other, with one process_vm_writev (at
// most IOV_MAX of each; no buffer empty). It returns the bytes written:
// fewer than asked when a remote area is not writable (then the areas
// before it were written whole).
func WriteRemotev(pid int, local [][]byte, remote []unix.RemoteIovec) (int, error) {
	if len(local) == 0 || len(remote) == 0 {
		return 0, nil
	}
	iov := make([]unix.Iovec, len(local))
	for i, b := range local {
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
	}
	return unix.ProcessVMWritev(pid, iov, remote, 0)
}

// ProcessMrelease frees the memory of the dying process that pidfd refers
// to from the calling thread (process_mrelease(2), Linux 5.15), alongside
// the process's own exit: a large address space goes away sooner. It fails
// with EINVAL unless the process was killed, with ESRCH once it is gone.
func ProcessMrelease(pidfd int) error {
	if _, _, e := unix.Syscall(unix.SYS_PROCESS_MRELEASE, uintptr(pidfd), 0, 0); e != 0 {
		return e
	}
	return nil
}
