package proc

import (
	"encoding/binary"
	"errors"
)

// Auxiliary vector entry types used by the restorer (include/uapi/linux/auxvec.h).
const (
	AT_NULL         = 0
	AT_PHDR         = 3
	AT_PHENT        = 4
	AT_PHNUM        = 5
	AT_PAGESZ       = 6
	AT_BASE         = 7
	AT_ENTRY        = 9
	AT_RANDOM       = 25
	AT_EXECFN       = 31
	AT_SYSINFO_EHDR = 33 // address of the [vdso]
	AT_MINSIGSTKSZ  = 51
)

// ParseAuxv parses /proc/PID/auxv: native-endian (type, value) pairs of
// uint64. It returns the words up to and including the AT_NULL pair, and an
// error if the data is not whole pairs or has no AT_NULL.
func ParseAuxv(data []byte) ([]uint64, error) {
	return parseAuxv(data, "auxv")
}

// ReadAuxv reads /proc/PID/auxv.
func ReadAuxv(pid int) ([]uint64, error) {
	path := pidPath(pid, "auxv")
	data, err := readFile(path, 512)
	if err != nil {
		return nil, err
	}
	return parseAuxv(data, path)
}

func parseAuxv(data []byte, file string) ([]uint64, error) {
	if len(data)%16 != 0 {
		return nil, &ParseError{File: file, Field: "auxv", Err: errors.New("not a whole number of (type, value) pairs")}
	}
	out := make([]uint64, 0, len(data)/8)
	for i := 0; i < len(data); i += 16 {
		typ := binary.LittleEndian.Uint64(data[i:])
		val := binary.LittleEndian.Uint64(data[i+8:])
		out = append(out, typ, val)
		if typ == AT_NULL {
			return out, nil
		}
	}
	return nil, &ParseError{File: file, Field: "auxv", Err: errors.New("no AT_NULL entry")}
}

// AuxvValue returns the value of the first entry of type typ in auxv as
// returned by ParseAuxv.
func AuxvValue(auxv []uint64, typ uint64) (uint64, bool) {
	for i := 0; i+1 < len(auxv); i += 2 {
		if auxv[i] == typ {
			return auxv[i+1], true
		}
		if auxv[i] == AT_NULL {
			break
		}
	}
	return 0, false
}
