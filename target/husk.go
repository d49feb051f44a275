package target

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
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
func startHusk(tn *core.TimeOffsets) (*exec.Cmd, error) {
	fd, err := unix.MemfdCreate("migrate-husk", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "migrate-husk")
	defer f.Close()
	if _, err := f.Write(huskELF()); err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/fd/3",
		Args:       []string{"migrate-husk"},
		ExtraFiles: []*os.File{f},
		Env:        []string{},
	}
	start := cmd.Start
	if tn != nil {
		start = func() error { return startInTimeNamespace(cmd, *tn) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start husk: %w", err)
	}
	return cmd, nil
}
