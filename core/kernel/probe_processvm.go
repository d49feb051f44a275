package kernel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/procmig/migrate/internal/raw"
)

const (
	vmInit  = "migrate-probe-initial-content!!!"
	vmWrite = "migrate-probe-written-by-parent!"
)

// helperBuf is the buffer the "buffer" helper exposes. A package-level
// array lives in the data segment: its address is fixed.
var helperBuf [len(vmInit)]byte

// ProbeProcessVM reads a buffer of a helper child with process_vm_readv,
// overwrites it with process_vm_writev, reads it back, and has the child
// confirm that it sees the new bytes.
func ProbeProcessVM(ctx context.Context) (string, error) {
	h, line, err := startHelper(ctx, "buffer")
	if err != nil {
		return "", err
	}
	defer h.kill()
	kv, err := parseAnswer(line)
	if err != nil {
		return "", err
	}
	addr, err := strconv.ParseUint(kv["addr"], 0, 64)
	if err != nil {
		return "", fmt.Errorf("helper address %q: %w", kv["addr"], err)
	}
	pid := h.pid()
	got := make([]byte, len(vmInit))
	if n, err := raw.ReadRemote(pid, got, addr); err != nil || n != len(got) {
		return "", unsupported(FeatureProcessVM, fmt.Sprintf("process_vm_readv of %d bytes returned %d", len(got), n), err)
	}
	if string(got) != vmInit {
		return "", unsupported(FeatureProcessVM, fmt.Sprintf("process_vm_readv read %q, the child holds %q", got, vmInit), nil)
	}
	src := []byte(vmWrite)
	if n, err := raw.WriteRemote(pid, src, addr); err != nil || n != len(src) {
		return "", unsupported(FeatureProcessVM, fmt.Sprintf("process_vm_writev of %d bytes returned %d", len(src), n), err)
	}
	clear(got)
	if n, err := raw.ReadRemote(pid, got, addr); err != nil || n != len(got) {
		return "", unsupported(FeatureProcessVM, "process_vm_readv after the write", err)
	}
	if string(got) != vmWrite {
		return "", unsupported(FeatureProcessVM, fmt.Sprintf("read back %q after writing %q", got, vmWrite), nil)
	}
	line, err = h.call("show")
	if err != nil {
		return "", err
	}
	kv, err = parseAnswer(line)
	if err != nil {
		return "", err
	}
	if seen, _ := hex.DecodeString(kv["data"]); string(seen) != vmWrite {
		return "", unsupported(FeatureProcessVM, fmt.Sprintf("the child sees %q after process_vm_writev of %q", seen, vmWrite), nil)
	}
	if err := h.close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("read, wrote and read back %d bytes of a child", len(vmWrite)), nil
}

func helperBuffer(say func(string, ...any), cmds *bufio.Scanner) {
	copy(helperBuf[:], vmInit)
	say("ok addr=%#x", raw.AddrOf(helperBuf[:]))
	for cmds.Scan() {
		if cmds.Text() != "show" {
			say("err unknown command %q", cmds.Text())
			continue
		}
		// Copy first: the parent writes the array behind the Go
		// compiler's back.
		snap := bytes.Clone(helperBuf[:])
		say("ok data=%s", hex.EncodeToString(snap))
	}
}
