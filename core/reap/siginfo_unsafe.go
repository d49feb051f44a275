package reap

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfoPID returns si_pid of a siginfo_t: on 64-bit Linux the union that
// holds it starts at offset 16, after si_signo, si_errno, si_code and
// padding.
func siginfoPID(info *unix.Siginfo) int32 {
	b := (*[128]byte)(unsafe.Pointer(info))
	return int32(uint32(b[16]) | uint32(b[17])<<8 | uint32(b[18])<<16 | uint32(b[19])<<24)
}

// siginfoCode returns si_code of a siginfo_t (after si_signo and si_errno).
func siginfoCode(info *unix.Siginfo) int32 {
	b := (*[128]byte)(unsafe.Pointer(info))
	return int32(uint32(b[8]) | uint32(b[9])<<8 | uint32(b[10])<<16 | uint32(b[11])<<24)
}
