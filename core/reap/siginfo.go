package reap

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// siginfoPID returns si_pid of a siginfo_t: on 64-bit Linux the union that
// holds it starts at offset 16, after si_signo, si_errno, si_code and
// padding.
func siginfoPID(info *unix.Siginfo) int32 {
	return int32(binary.LittleEndian.Uint32(raw.Bytes(info)[16:]))
}

// siginfoCode returns si_code of a siginfo_t (after si_signo and si_errno).
func siginfoCode(info *unix.Siginfo) int32 {
	return int32(binary.LittleEndian.Uint32(raw.Bytes(info)[8:]))
}
