package proc

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mapping is one line of /proc/PID/maps, plus the per-mapping fields of
// /proc/PID/smaps when parsed from there.
//
// A line looks like
//
//	7f45b6350000-7f45b6352000 rw-p 00001000 fe:00 9979060    /tmp/a b (deleted)
//
// start-end, permissions (r, w, x, then s for a shared or p for a private
// mapping), file offset, device major:minor (hex), inode (decimal), and after
// padding the name: a path, a bracketed name such as [heap], [stack], [vdso],
// [anon:NAME] or [anon_shmem:NAME], or nothing for an anonymous mapping.
//
// The kernel escapes a newline in a path as \012 and nothing else, so a path
// is as shown; a file whose name really ends in " (deleted)" cannot be told
// from an unlinked one. Shared anonymous memory and SysV shm live on the
// internal shmem mount (device 00:01) and show as "/dev/zero (deleted)" and
// "/SYSVKEY (deleted)"; memfds as "/memfd:NAME (deleted)".
type Mapping struct {
	Start, End   uint64
	Prot         int  // unix.PROT_READ|PROT_WRITE|PROT_EXEC bits from "rwxp"
	Shared       bool // 's' (VM_MAYSHARE) rather than 'p'
	Offset       uint64
	Major, Minor uint32
	Inode        uint64
	Path         string   // as shown, with " (deleted)" removed
	Deleted      bool     // path had the " (deleted)" suffix
	VmFlags      []string // from smaps (nil when parsed from maps)

	// From smaps (0 when parsed from maps), in bytes.
	Rss, Anonymous, Swap uint64

	// Additions: more smaps fields, in bytes.
	Pss                        uint64
	SharedClean, SharedDirty   uint64
	PrivateClean, PrivateDirty uint64
	Locked                     uint64
	AnonHugePages              uint64
	KernelPageSize             uint64 // 4096, or the huge page size of a hugetlb mapping
	MMUPageSize                uint64
	ProtectionKey              int // pkey_mprotect's key; 0 without memory protection keys
}

// Size is End-Start.
func (m *Mapping) Size() uint64 { return m.End - m.Start }

// IsSpecial reports whether m is one of the kernel's special mappings that
// are not restored by mapping memory: [vdso], [vvar], [vvar_vclock],
// [vsyscall].
func (m *Mapping) IsSpecial() bool {
	switch m.Path {
	case "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]":
		return true
	}
	return false
}

// HasFlag reports whether the smaps VmFlags of m contain f ("dc", "dd",
// "hg", "nh", "wf", "gd", "sd", ...).
func (m *Mapping) HasFlag(f string) bool {
	for _, v := range m.VmFlags {
		if v == f {
			return true
		}
	}
	return false
}

// AnonName returns NAME for a mapping named with PR_SET_VMA_ANON_NAME, shown
// as [anon:NAME] (private) or [anon_shmem:NAME] (shared).
func (m *Mapping) AnonName() (string, bool) {
	if s, ok := strings.CutPrefix(m.Path, "[anon:"); ok && strings.HasSuffix(s, "]") {
		return s[:len(s)-1], true
	}
	if s, ok := strings.CutPrefix(m.Path, "[anon_shmem:"); ok && strings.HasSuffix(s, "]") {
		return s[:len(s)-1], true
	}
	return "", false
}

// IsMemfd reports whether m maps a memfd ("/memfd:NAME (deleted)").
func (m *Mapping) IsMemfd() bool {
	return m.Deleted && strings.HasPrefix(m.Path, "/memfd:")
}

// IsSysVShm reports whether m is a SysV shared memory segment attached with
// shmat ("/SYSV%08x (deleted)", where the hex is the IPC key).
func (m *Mapping) IsSysVShm() bool {
	return m.Shared && m.Deleted && len(m.Path) == len("/SYSV00000000") &&
		strings.HasPrefix(m.Path, "/SYSV")
}

// IsAnonShared reports whether m is shared anonymous memory
// (mmap MAP_SHARED|MAP_ANONYMOUS, or MAP_SHARED of /dev/zero): the kernel
// backs both with a shmem file it names "/dev/zero (deleted)".
func (m *Mapping) IsAnonShared() bool {
	return m.Shared && m.Deleted && m.Path == "/dev/zero"
}

const deletedSuffix = " (deleted)"

var protBits = [3]int{unix.PROT_READ, unix.PROT_WRITE, unix.PROT_EXEC}

// ParseMaps parses the text of /proc/PID/maps.
func ParseMaps(r io.Reader) ([]Mapping, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return parseMaps(data, "maps", false)
}

// ParseSmaps parses the text of /proc/PID/smaps: maps lines, each followed by
// "Key: N kB" lines and a VmFlags line.
func ParseSmaps(r io.Reader) ([]Mapping, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return parseMaps(data, "smaps", true)
}

// ReadMaps reads /proc/PID/maps. The maps of a process that exits while
// being read come back empty; ReadMaps then reports the exit (ESRCH) instead
// of an empty list. A kernel thread has no mappings and gives an empty list.
func ReadMaps(pid int) ([]Mapping, error) {
	return readMaps(pid, "maps", false, 64<<10)
}

// ReadSmaps reads /proc/PID/smaps, with the same exit handling as ReadMaps.
func ReadSmaps(pid int) ([]Mapping, error) {
	return readMaps(pid, "smaps", true, 1<<20)
}

func readMaps(pid int, name string, smaps bool, hint int) ([]Mapping, error) {
	path := pidPath(pid, name)
	data, err := readFile(path, hint)
	if err != nil {
		return nil, err
	}
	maps, err := parseMaps(data, path, smaps)
	if err != nil {
		return nil, err
	}
	if len(maps) == 0 {
		if err := checkEmptyMM(pid, path); err != nil {
			return nil, err
		}
	}
	return maps, nil
}

// checkEmptyMM explains an empty maps file: fine for a kernel thread, an
// error for a process that has exited (zombie or gone).
func checkEmptyMM(pid int, path string) error {
	st, err := ReadStat(pid)
	if err != nil {
		return err
	}
	if st.Flags&PF_KTHREAD != 0 {
		return nil
	}
	if st.State == 'Z' || st.State == 'X' || st.State == 'x' {
		return &fs.PathError{Op: "read", Path: path, Err: syscall.ESRCH}
	}
	return nil
}

func parseMaps(data []byte, file string, smaps bool) ([]Mapping, error) {
	n := bytes.Count(data, []byte{'\n'})
	if smaps {
		n /= 20 // about 25 lines per mapping on 6.x
	}
	maps := make([]Mapping, 0, n+1)
	var prev string // last path, to share the string between consecutive mappings
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		line, data = cutLine(data)
		if smaps && len(maps) > 0 && isSmapsField(line) {
			if err := parseSmapsField(&maps[len(maps)-1], line, file, lineNo); err != nil {
				return nil, err
			}
			continue
		}
		var m Mapping
		if err := parseMapsLine(&m, line, &prev, file, lineNo); err != nil {
			return nil, err
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// isSmapsField tells a "Key: value" line from a mapping line: the first word
// of a mapping line is "start-end", which has no ':'.
func isSmapsField(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i < 0 {
		return false
	}
	key := line[:i]
	return bytes.IndexByte(key, ' ') < 0 && bytes.IndexByte(key, '-') < 0 && bytes.IndexByte(key, '\t') < 0
}

func parseMapsLine(m *Mapping, line []byte, prev *string, file string, lineNo int) error {
	bad := func(field string, v []byte, err error) error {
		return parseErr(file, lineNo, field, v, err)
	}
	f, rest := nextField(line)
	dash := bytes.IndexByte(f, '-')
	if dash < 0 {
		return bad("address", f, errSyntax)
	}
	var err error
	if m.Start, err = parseHex(f[:dash]); err != nil {
		return bad("address", f, err)
	}
	if m.End, err = parseHex(f[dash+1:]); err != nil {
		return bad("address", f, err)
	}
	if m.End <= m.Start {
		return bad("address", f, errors.New("end not above start"))
	}

	f, rest = nextField(rest)
	if len(f) != 4 {
		return bad("perms", f, errSyntax)
	}
	for i, c := range f[:3] {
		switch {
		case c == "rwx"[i]:
			m.Prot |= protBits[i]
		case c != '-':
			return bad("perms", f, errSyntax)
		}
	}
	switch f[3] {
	case 's':
		m.Shared = true
	case 'p':
	default:
		return bad("perms", f, errSyntax)
	}

	f, rest = nextField(rest)
	if m.Offset, err = parseHex(f); err != nil {
		return bad("offset", f, err)
	}

	f, rest = nextField(rest)
	colon := bytes.IndexByte(f, ':')
	if colon < 0 {
		return bad("dev", f, errSyntax)
	}
	maj, err := parseUintBits(f[:colon], 16, 32)
	if err != nil {
		return bad("dev", f, err)
	}
	min, err := parseUintBits(f[colon+1:], 16, 32)
	if err != nil {
		return bad("dev", f, err)
	}
	m.Major, m.Minor = uint32(maj), uint32(min)

	f, rest = nextField(rest)
	if m.Inode, err = parseDec(f); err != nil {
		return bad("inode", f, err)
	}

	// The name follows padding and may itself contain spaces; it never
	// starts with one (paths start with '/', other names with '[' or a
	// letter), so skip all leading blanks and keep the rest verbatim.
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if bytes.HasSuffix(rest, []byte(deletedSuffix)) {
		rest = rest[:len(rest)-len(deletedSuffix)]
		m.Deleted = true
	}
	if len(rest) > 0 {
		if string(rest) != *prev {
			*prev = string(rest)
		}
		m.Path = *prev
	}
	return nil
}

func parseSmapsField(m *Mapping, line []byte, file string, lineNo int) error {
	key, value, _ := cutKey(line)
	if string(key) == "VmFlags" {
		m.VmFlags = parseVmFlags(value, m.VmFlags[:0])
		return nil
	}
	if string(key) == "ProtectionKey" {
		k, err := parseInt(bytes.TrimSpace(value), 32)
		if err != nil {
			return parseErr(file, lineNo, string(key), value, err)
		}
		m.ProtectionKey = int(k)
		return nil
	}
	var dst *uint64
	switch string(key) {
	case "Rss":
		dst = &m.Rss
	case "Anonymous":
		dst = &m.Anonymous
	case "Swap":
		dst = &m.Swap
	case "Pss":
		dst = &m.Pss
	case "Shared_Clean":
		dst = &m.SharedClean
	case "Shared_Dirty":
		dst = &m.SharedDirty
	case "Private_Clean":
		dst = &m.PrivateClean
	case "Private_Dirty":
		dst = &m.PrivateDirty
	case "Locked":
		dst = &m.Locked
	case "AnonHugePages":
		dst = &m.AnonHugePages
	case "KernelPageSize":
		dst = &m.KernelPageSize
	case "MMUPageSize":
		dst = &m.MMUPageSize
	default:
		return nil // fields this package does not keep
	}
	v, err := parseKB(value)
	if err != nil {
		return parseErr(file, lineNo, string(key), value, err)
	}
	*dst = v
	return nil
}

// parseKB parses "N kB" into bytes.
func parseKB(value []byte) (uint64, error) {
	num, unit := nextField(value)
	unit = trimSpace(unit)
	if string(unit) != "kB" {
		return 0, errSyntax
	}
	n, err := parseDec(num)
	if err != nil {
		return 0, err
	}
	if n > 1<<54-1 {
		return 0, errRange
	}
	return n << 10, nil
}

// vmFlagNames holds the VmFlags mnemonics of fs/proc/task_mmu.c
// (show_smap_vma_flags), so parsed flags share these strings instead of each
// allocating.
var vmFlagNames = func() map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields("rd wr ex sh mr mw me ms gd pf lf io sr rr dc de ac nr ht sf nl ar wf dd mg um uw sd mm hg nh lo bt mt ss sl ui") {
		m[f] = f
	}
	return m
}()

func parseVmFlags(value []byte, flags []string) []string {
	for {
		var f []byte
		f, value = nextField(value)
		if len(f) == 0 {
			return flags
		}
		s, ok := vmFlagNames[string(f)]
		if !ok {
			s = string(f)
		}
		flags = append(flags, s)
	}
}
