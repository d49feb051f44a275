package target

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
)

// The husk is a tiny static ELF that does nothing but pause(). migrate
// seizes it and injects clone3 with set_tid into it to create a process
// with a chosen PID, which then becomes the restored process.
const (
	huskBase  = 0x10000 // at mmap_min_addr: out of the way of usual layouts
	huskEntry = huskBase + elfHeaderSize + phdrSize
	// huskSyscall is the address of the husk's syscall instruction.
	huskSyscall = huskEntry + 5
	// huskData is a writable page of the husk for injected calls' arguments.
	huskData = huskBase + 0x1000

	elfHeaderSize = 64
	phdrSize      = 56
)

// huskCode loops on pause():  mov eax, 34; syscall; jmp back.
var huskCode = []byte{0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7}

// huskELF returns the husk executable.
func huskELF() []byte {
	le := binary.LittleEndian
	b := make([]byte, elfHeaderSize+phdrSize, elfHeaderSize+phdrSize+len(huskCode))
	copy(b, []byte{0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* LE */, 1 /* version */})
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 0x3e) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], huskEntry)
	le.PutUint64(b[32:], elfHeaderSize) // e_phoff
	le.PutUint16(b[52:], elfHeaderSize)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], 1) // e_phnum
	ph := b[elfHeaderSize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 7) // RWX
	le.PutUint64(ph[8:], 0) // p_offset
	le.PutUint64(ph[16:], huskBase)
	le.PutUint64(ph[24:], huskBase)
	fileSize := uint64(elfHeaderSize + phdrSize + len(huskCode))
	le.PutUint64(ph[32:], fileSize)
	le.PutUint64(ph[40:], 0x2000) // two pages: code and data
	le.PutUint64(ph[48:], 0x1000)
	return append(b, huskCode...)
}

// startHusk runs the husk from a memfd, stdio on /dev/null: in a new
// time namespace with the offsets tn, if not nil (startInTimeNamespace).
// Some kernels refuse that (Debian 12's 6.1: EINVAL for a clone with
// CLONE_VM, which Go's fork/exec uses, whose child would enter a time
// namespace other than its parent's; 6.18 takes it): then
// the husk starts in migrate's, and inNS says so; the caller makes the
// namespace from the husk (huskTimeNamespace) before it forks.
func startHusk(tn *core.TimeOffsets) (cmd *exec.Cmd, inNS bool, err error) {
	fd, err := unix.MemfdCreate("migrate-husk", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, false, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "migrate-husk")
	defer f.Close()
	if _, err := f.Write(huskELF()); err != nil {
		return nil, false, err
	}
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path:       "/proc/self/fd/3",
			Args:       []string{"migrate-husk"},
			ExtraFiles: []*os.File{f},
			Env:        []string{},
		}
	}
	if tn != nil {
		cmd = newCmd()
		err = startInTimeNamespace(cmd, *tn)
		var te *TimeNamespaceError
		if err == nil || errors.As(err, &te) || !errors.Is(err, unix.EINVAL) {
			if err != nil {
				return nil, false, fmt.Errorf("start husk: %w", err)
			}
			return cmd, true, nil
		}
	}
	cmd = newCmd()
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("start husk: %w", err)
	}
	return cmd, false, nil
}

// huskTimeNamespace makes a time namespace with offsets off for the
// husk's children to come (unshare(CLONE_NEWTIME) injected into it), the
// husk itself staying in migrate's: the processes it forks are born in
// the namespace.
//
// Preconditions: the husk is seized and has forked nothing yet.
func huskTimeNamespace(hp *ptrace.Proc, off core.TimeOffsets) error {
	if _, err := hp.Syscall(hp.Leader(), "unshare(CLONE_NEWTIME)", unix.SYS_UNSHARE, unix.CLONE_NEWTIME); err != nil {
		return &TimeNamespaceError{Offsets: off, Reason: "unshare(CLONE_NEWTIME) in the husk", Err: err}
	}
	path := fmt.Sprintf("/proc/%d/timens_offsets", hp.PID)
	if err := os.WriteFile(path, []byte(formatTimeOffsets(off)), 0); err != nil {
		return &TimeNamespaceError{Offsets: off, Reason: fmt.Sprintf("set the offsets %v", off), Err: err}
	}
	return nil
}
