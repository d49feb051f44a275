package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/procmig/migrate/core/proc"
)

// MaxVDSOSize caps the vdso images parsed (a few pages in practice).
const MaxVDSOSize = 1 << 20

// VDSOFunc is an exported function of a vdso image.
type VDSOFunc struct {
	Name string
	Off  uint64 // from the start of the image
}

// VDSOFuncs parses a vdso image, as mapped (its first byte at its ELF
// header), and returns its exported functions sorted by offset, then
// name. The image comes from the dump: everything it says is checked
// against its length.
func VDSOFuncs(img []byte) ([]VDSOFunc, error) {
	if len(img) > MaxVDSOSize {
		return nil, fmt.Errorf("vdso image of %d bytes (at most %d)", len(img), MaxVDSOSize)
	}
	if err := tablesInside(img); err != nil {
		return nil, fmt.Errorf("vdso image: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("vdso image: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("vdso image: %v %v, not an x86-64 image", f.Class, f.Machine)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && (s.Offset > uint64(len(img)) || s.Size > uint64(len(img))-s.Offset) {
			return nil, fmt.Errorf("vdso image: section %q of %d bytes at %#x is outside the image", s.Name, s.Size, s.Offset)
		}
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, fmt.Errorf("vdso image: dynamic symbols: %w", err)
	}
	var out []VDSOFunc
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Section == elf.SHN_UNDEF || s.Name == "" {
			continue
		}
		if b := elf.ST_BIND(s.Info); b != elf.STB_GLOBAL && b != elf.STB_WEAK {
			continue
		}
		off, ok := imageOffset(f, s.Value)
		if !ok || off >= uint64(len(img)) {
			return nil, fmt.Errorf("vdso image: %s at %#x is outside the image", s.Name, s.Value)
		}
		out = append(out, VDSOFunc{Name: s.Name, Off: off})
	}
	if len(out) == 0 {
		return nil, errors.New("vdso image: no exported function")
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Off != out[j].Off {
			return out[i].Off < out[j].Off
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// tablesInside checks that the program and section header tables an
// ELF64 little-endian header announces lie inside img (debug/elf would
// try to read tens of thousands of entries a damaged header announces).
func tablesInside(img []byte) error {
	const ehdrSize = 64
	if len(img) < ehdrSize || string(img[:4]) != elf.ELFMAG || elf.Class(img[4]) != elf.ELFCLASS64 || elf.Data(img[5]) != elf.ELFDATA2LSB {
		return errors.New("not a 64-bit little-endian ELF image")
	}
	le := binary.LittleEndian
	n := uint64(len(img))
	for _, t := range []struct {
		what      string
		off       uint64
		size, num uint16
		minSize   uint16
	}{
		{"program headers", le.Uint64(img[0x20:]), le.Uint16(img[0x36:]), le.Uint16(img[0x38:]), 56},
		{"section headers", le.Uint64(img[0x28:]), le.Uint16(img[0x3a:]), le.Uint16(img[0x3c:]), 64},
	} {
		if t.num == 0 {
			continue
		}
		if t.size < t.minSize || t.off > n || uint64(t.size)*uint64(t.num) > n-t.off {
			return fmt.Errorf("%d %s of %d bytes at %#x: outside the image of %d bytes", t.num, t.what, t.size, t.off, n)
		}
	}
	return nil
}

// imageOffset turns a virtual address of the image into an offset from
// its start, through its loadable segment.
func imageOffset(f *elf.File, vaddr uint64) (uint64, bool) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || vaddr < p.Vaddr || vaddr-p.Vaddr >= p.Filesz {
			continue
		}
		return vaddr - p.Vaddr + p.Off, true
	}
	return 0, false
}

// OwnVDSO returns the address and the contents of this process's [vdso].
func OwnVDSO() (uint64, []byte, error) {
	maps, err := proc.ReadMaps(os.Getpid())
	if err != nil {
		return 0, nil, err
	}
	for _, m := range maps {
		if m.Path != "[vdso]" {
			continue
		}
		f, err := os.Open("/proc/self/mem")
		if err != nil {
			return 0, nil, err
		}
		defer f.Close()
		buf := make([]byte, m.End-m.Start)
		if _, err := f.ReadAt(buf, int64(m.Start)); err != nil {
			return 0, nil, fmt.Errorf("read [vdso]: %w", err)
		}
		return m.Start, buf, nil
	}
	return 0, nil, unsupported(FeatureVDSO, "no [vdso] mapped (vdso=0?)", nil)
}
