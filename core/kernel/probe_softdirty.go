package kernel

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ProbeSoftDirty asks a helper child to clear its soft-dirty bits (write
// "4" to /proc/self/clear_refs), write to a page, and look for bit 55 of
// the page's pagemap entry. The write to clear_refs succeeds even on a
// kernel without CONFIG_MEM_SOFT_DIRTY, so only the bit tells.
func ProbeSoftDirty(ctx context.Context) (string, error) {
	h, kv, err := askHelper(ctx, "soft-dirty", FeatureSoftDirty, "soft-dirty in a child")
	if err != nil {
		return "", err
	}
	defer h.kill()
	if err := h.close(); err != nil {
		return "", err
	}
	switch {
	case kv["after_write"] != "1":
		return "", unsupported(FeatureSoftDirty, "bit 55 never set after a write; CONFIG_MEM_SOFT_DIRTY missing", nil)
	case kv["after_clear"] != "0":
		return "", unsupported(FeatureSoftDirty, "bit 55 stays set after clear_refs 4", nil)
	}
	return "bit 55 cleared by clear_refs 4, set again by a write", nil
}

func helperSoftDirty(say func(string, ...any), _ *bufio.Scanner) {
	pageSize := os.Getpagesize()
	page, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		sayErr(say, "mmap", err)
		return
	}
	defer unix.Munmap(page)
	page[0] = 1 // populate
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		say("err %v", err)
		return
	}
	defer pm.Close()
	off := int64(raw.AddrOf(page)/uint64(pageSize)) * 8
	bit := func() (int, error) {
		var b [8]byte
		if _, err := pm.ReadAt(b[:], off); err != nil {
			return 0, err
		}
		e := binary.LittleEndian.Uint64(b[:])
		if e&raw.PM_PRESENT == 0 {
			return 0, errors.New("probe page not present")
		}
		if e&raw.PM_SOFT_DIRTY != 0 {
			return 1, nil
		}
		return 0, nil
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
		say("err write 4 to /proc/self/clear_refs: %v", err)
		return
	}
	afterClear, err := bit()
	if err != nil {
		say("err pagemap: %v", err)
		return
	}
	page[0] = 2
	afterWrite, err := bit()
	if err != nil {
		say("err pagemap: %v", err)
		return
	}
	say("ok after_clear=%d after_write=%d", afterClear, afterWrite)
}
