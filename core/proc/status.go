package proc

import (
	"io"
)

// Status is /proc/PID/status (or task/TID/status). Fields the kernel does
// not print for this task (VmRSS of a kernel thread, Umask of a task without
// fs) stay zero.
type Status struct {
	Name      string // comm, with the kernel's \n and \\ escapes undone
	Umask     uint32
	HasUmask  bool
	State     byte
	Tgid      int
	PID       int
	PPID      int
	TracerPID int
	UID, GID  [4]uint32 // real, effective, saved, fs
	Groups    []uint32
	NSpid     []int // this pid in each PID namespace, outermost first
	NSpgid    []int
	NSsid     []int
	Threads   int

	SigPnd, ShdPnd, SigBlk, SigIgn, SigCgt uint64 // bit n-1 is signal n
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64

	NoNewPrivs bool
	Seccomp    int    // SECCOMP_MODE_*
	VmRSS      uint64 // bytes

	// Additions.
	NStgid         []int
	VmSize, VmSwap uint64 // bytes
	VmLck          uint64 // bytes: locked memory (mm->locked_vm)
	VmHWM          uint64 // bytes: peak resident memory (since exec or clear_refs 5)
	// RssAnon and RssShmem are the resident anonymous and shared
	// (shmem) memory, in bytes: VmRSS without the file pages.
	RssAnon, RssShmem uint64
	SeccompFilters    int
	Kthread           bool // "Kthread: 1" (Linux 6.7+; see also Stat.Flags)
}

// ParseStatus parses /proc/PID/status. The Name, State and Pid lines are
// required.
func ParseStatus(r io.Reader) (*Status, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return parseStatus(data, "status")
}

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (*Status, error) {
	return readStatus(pidPath(pid, "status"))
}

// ReadTaskStatus reads /proc/PID/task/TID/status.
func ReadTaskStatus(pid, tid int) (*Status, error) {
	return readStatus(taskPath(pid, tid, "status"))
}

func readStatus(path string) (*Status, error) {
	data, err := readFile(path, 4096)
	if err != nil {
		return nil, err
	}
	return parseStatus(data, path)
}

func parseStatus(data []byte, file string) (*Status, error) {
	st := &Status{}
	var seen struct{ name, state, pid bool }
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		line, data = cutLine(data)
		colon := -1
		for i, c := range line {
			if c == ':' {
				colon = i
				break
			}
		}
		if colon < 0 {
			return nil, parseErr(file, lineNo, "", line, errSyntax)
		}
		key := line[:colon]
		value := line[colon+1:]
		if string(key) == "Name" {
			// "Name:\t" then the escaped comm, which may begin or end
			// with blanks.
			if len(value) > 0 && value[0] == '\t' {
				value = value[1:]
			}
			st.Name = unescapeComm(value)
			seen.name = true
			continue
		}
		value = trimSpace(value)
		var err error
		switch string(key) {
		case "Umask":
			var v uint64
			v, err = parseUintBits(value, 8, 32)
			st.Umask, st.HasUmask = uint32(v), true
		case "State":
			// "R (running)"
			if len(value) == 0 || (len(value) > 1 && value[1] != ' ') {
				err = errSyntax
			} else {
				st.State = value[0]
				seen.state = true
			}
		case "Tgid":
			st.Tgid, err = statusInt(value)
		case "Pid":
			st.PID, err = statusInt(value)
			seen.pid = true
		case "PPid":
			st.PPID, err = statusInt(value)
		case "TracerPid":
			st.TracerPID, err = statusInt(value)
		case "Uid":
			err = statusIDs(value, &st.UID)
		case "Gid":
			err = statusIDs(value, &st.GID)
		case "Groups":
			st.Groups, err = statusUint32s(value)
		case "NStgid":
			st.NStgid, err = statusInts(value)
		case "NSpid":
			st.NSpid, err = statusInts(value)
		case "NSpgid":
			st.NSpgid, err = statusInts(value)
		case "NSsid":
			st.NSsid, err = statusInts(value)
		case "Threads":
			st.Threads, err = statusInt(value)
		case "SigPnd":
			st.SigPnd, err = parseHex(value)
		case "ShdPnd":
			st.ShdPnd, err = parseHex(value)
		case "SigBlk":
			st.SigBlk, err = parseHex(value)
		case "SigIgn":
			st.SigIgn, err = parseHex(value)
		case "SigCgt":
			st.SigCgt, err = parseHex(value)
		case "CapInh":
			st.CapInh, err = parseHex(value)
		case "CapPrm":
			st.CapPrm, err = parseHex(value)
		case "CapEff":
			st.CapEff, err = parseHex(value)
		case "CapBnd":
			st.CapBnd, err = parseHex(value)
		case "CapAmb":
			st.CapAmb, err = parseHex(value)
		case "NoNewPrivs":
			st.NoNewPrivs, err = statusBool(value)
		case "Seccomp":
			st.Seccomp, err = statusInt(value)
		case "Seccomp_filters":
			st.SeccompFilters, err = statusInt(value)
		case "Kthread":
			st.Kthread, err = statusBool(value)
		case "VmRSS":
			st.VmRSS, err = parseKB(value)
		case "VmSize":
			st.VmSize, err = parseKB(value)
		case "VmSwap":
			st.VmSwap, err = parseKB(value)
		case "VmLck":
			st.VmLck, err = parseKB(value)
		case "VmHWM":
			st.VmHWM, err = parseKB(value)
		case "RssAnon":
			st.RssAnon, err = parseKB(value)
		case "RssShmem":
			st.RssShmem, err = parseKB(value)
		}
		if err != nil {
			return nil, parseErr(file, lineNo, string(key), value, err)
		}
	}
	switch {
	case !seen.name:
		return nil, parseErr(file, 0, "Name", nil, errMissing)
	case !seen.state:
		return nil, parseErr(file, 0, "State", nil, errMissing)
	case !seen.pid:
		return nil, parseErr(file, 0, "Pid", nil, errMissing)
	}
	return st, nil
}

// unescapeComm undoes the escaping of status's Name line, which shows a
// newline as \n and a backslash as \\ (proc_task_name with escape).
func unescapeComm(b []byte) string {
	i := 0
	for i < len(b) && b[i] != '\\' {
		i++
	}
	if i == len(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '\\' && i+1 < len(b) {
			switch b[i+1] {
			case 'n':
				c = '\n'
				i++
			case '\\':
				i++
			}
		}
		out = append(out, c)
	}
	return string(out)
}

func statusInt(b []byte) (int, error) {
	v, err := parseInt(b, bitsInt)
	return int(v), err
}

func statusBool(b []byte) (bool, error) {
	switch string(b) {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, errSyntax
}

// statusIDs parses the four tab-separated ids of Uid and Gid.
func statusIDs(b []byte, dst *[4]uint32) error {
	for i := range dst {
		var f []byte
		f, b = nextField(b)
		v, err := parseUintBits(f, 10, 32)
		if err != nil {
			return err
		}
		dst[i] = uint32(v)
	}
	if len(trimSpace(b)) != 0 {
		return errSyntax
	}
	return nil
}

func statusInts(b []byte) ([]int, error) {
	var out []int
	for {
		var f []byte
		f, b = nextField(b)
		if len(f) == 0 {
			return out, nil
		}
		v, err := parseInt(f, bitsInt)
		if err != nil {
			return nil, err
		}
		out = append(out, int(v))
	}
}

func statusUint32s(b []byte) ([]uint32, error) {
	var out []uint32
	for {
		var f []byte
		f, b = nextField(b)
		if len(f) == 0 {
			return out, nil
		}
		v, err := parseUintBits(f, 10, 32)
		if err != nil {
			return nil, err
		}
		out = append(out, uint32(v))
	}
}
