package proc

import "unsafe"

// entryBytes returns the memory of e as bytes, so pread fills the entries
// in place. Pagemap entries are native-endian uint64, which is what
// PagemapEntry is.
func entryBytes(e []PagemapEntry) []byte {
	if len(e) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&e[0])), len(e)*8)
}
