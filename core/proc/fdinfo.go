package proc

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
)

// FDInfo is /proc/PID/fdinfo/N. Every file has pos, flags, mnt_id and ino;
// what follows depends on the kind of file (fs/*.c, *_show_fdinfo):
//
//	eventfd   eventfd-count: %16llx (hex!), eventfd-id: %d, eventfd-semaphore: %d
//	epoll     tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x  (one per target)
//	timerfd   clockid: %d, ticks: %llu, settime flags: 0%o, it_value: (%llu, %llu), it_interval: (%llu, %llu)
//	inotify   inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x ...  (one per watch)
//	signalfd  sigmask: %016llx
//	pidfd     Pid: %d, NSpid: %d ...
//	locks     lock: ...  (one per lock held)
type FDInfo struct {
	Pos   int64
	Flags int // open flags (O_*), printed in octal
	MntID int
	Ino   uint64

	EventfdCount     uint64
	HasEventfd       bool
	EventfdID        int
	EventfdSemaphore bool // false also when the kernel does not print it

	// Extra maps the key of every other "key: value" line to its value with
	// leading blanks removed; for a key that repeats (tfd, inotify wd,
	// lock) it holds the last. Lines holds all those lines verbatim, in
	// order, and is where repeated lines are read from.
	Extra map[string]string
	Lines []string
}

// ParseFDInfo parses /proc/PID/fdinfo/N. The pos, flags, mnt_id and ino
// lines are required.
func ParseFDInfo(r io.Reader) (*FDInfo, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return parseFDInfo(data, "fdinfo")
}

// ReadFDInfo reads /proc/PID/fdinfo/FD.
func ReadFDInfo(pid, fd int) (*FDInfo, error) {
	path := pidPath(pid, "fdinfo/"+strconv.Itoa(fd))
	data, err := readFile(path, 4096)
	if err != nil {
		return nil, err
	}
	return parseFDInfo(data, path)
}

func parseFDInfo(data []byte, file string) (*FDInfo, error) {
	fi := &FDInfo{}
	var seen [4]bool // pos, flags, mnt_id, ino
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		line, data = cutLine(data)
		if len(line) == 0 {
			continue
		}
		key, value, ok := cutKey(line)
		if !ok {
			return nil, parseErr(file, lineNo, "", line, errSyntax)
		}
		var err error
		var v uint64
		switch string(key) {
		case "pos":
			fi.Pos, err = parseInt(trimSpace(value), bitsInt64)
			seen[0] = true
		case "flags":
			v, err = parseUintBits(trimSpace(value), 8, 32)
			fi.Flags = int(v)
			seen[1] = true
		case "mnt_id":
			v, err = parseUintBits(trimSpace(value), 10, 31)
			fi.MntID = int(v)
			seen[2] = true
		case "ino":
			fi.Ino, err = parseDec(trimSpace(value))
			seen[3] = true
		case "eventfd-count":
			fi.EventfdCount, err = parseHex(trimSpace(value))
			fi.HasEventfd = true
		case "eventfd-id":
			v, err = parseUintBits(trimSpace(value), 10, 31)
			fi.EventfdID = int(v)
		case "eventfd-semaphore":
			fi.EventfdSemaphore, err = statusBool(trimSpace(value))
		default:
			if fi.Extra == nil {
				fi.Extra = make(map[string]string)
			}
			fi.Extra[string(key)] = string(value)
			fi.Lines = append(fi.Lines, string(line))
		}
		if err != nil {
			return nil, parseErr(file, lineNo, string(key), value, err)
		}
	}
	for i, name := range []string{"pos", "flags", "mnt_id", "ino"} {
		if !seen[i] {
			return nil, parseErr(file, 0, name, nil, errMissing)
		}
	}
	return fi, nil
}

// EpollTarget is one "tfd:" line of an epoll fd: a file registered with
// epoll_ctl(EPOLL_CTL_ADD).
type EpollTarget struct {
	FD     int    // the target's fd number in the process that added it
	Events uint32 // EPOLL* event mask, EPOLLET etc. included
	Data   uint64 // epoll_data as given to epoll_ctl
	Pos    int64  // file position of the target
	Ino    uint64 // target inode
	Sdev   uint32 // target superblock device (kernel encoding)
}

// EpollTargets parses the tfd lines of an epoll fd's fdinfo. It returns
// nil for other kinds of files.
func (fi *FDInfo) EpollTargets() ([]EpollTarget, error) {
	var out []EpollTarget
	for _, line := range fi.Lines {
		if len(line) < 4 || line[:4] != "tfd:" {
			continue
		}
		kv, err := splitKV(line)
		if err != nil {
			return nil, fdinfoErr(line, "tfd", err)
		}
		var t EpollTarget
		fields := []struct {
			key  string
			base uint64
			bits uint
			set  func(uint64)
		}{
			{"tfd", 10, 31, func(v uint64) { t.FD = int(v) }},
			{"events", 16, 32, func(v uint64) { t.Events = uint32(v) }},
			{"data", 16, 64, func(v uint64) { t.Data = v }},
			{"pos", 10, 63, func(v uint64) { t.Pos = int64(v) }},
			{"ino", 16, 64, func(v uint64) { t.Ino = v }},
			{"sdev", 16, 32, func(v uint64) { t.Sdev = uint32(v) }},
		}
		for _, f := range fields {
			s, ok := kv[f.key]
			if !ok {
				return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(line), Err: errMissing}
			}
			v, err := parseUintBits([]byte(s), f.base, f.bits)
			if err != nil {
				return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(s), Err: err}
			}
			f.set(v)
		}
		out = append(out, t)
	}
	return out, nil
}

// InotifyWatch is one "inotify" line of an inotify fd.
type InotifyWatch struct {
	WD          int
	Ino         uint64
	Sdev        uint32
	Mask        uint32
	IgnoredMask uint32
	// FHandleType and FHandle are the file handle of the watched inode
	// (for open_by_handle_at), when the kernel could encode one.
	FHandleType int
	FHandle     []byte
}

// InotifyWatches parses the watch lines of an inotify fd's fdinfo.
func (fi *FDInfo) InotifyWatches() ([]InotifyWatch, error) {
	var out []InotifyWatch
	for _, line := range fi.Lines {
		rest, ok := cutPrefix(line, "inotify ")
		if !ok {
			continue
		}
		kv, err := splitKV(rest)
		if err != nil {
			return nil, fdinfoErr(line, "inotify", err)
		}
		var w InotifyWatch
		fields := []struct {
			key  string
			bits uint
			opt  bool
			set  func(uint64)
		}{
			{"wd", 31, false, func(v uint64) { w.WD = int(v) }},
			{"ino", 64, false, func(v uint64) { w.Ino = v }},
			{"sdev", 32, false, func(v uint64) { w.Sdev = uint32(v) }},
			{"mask", 32, false, func(v uint64) { w.Mask = uint32(v) }},
			{"ignored_mask", 32, false, func(v uint64) { w.IgnoredMask = uint32(v) }},
			{"fhandle-type", 31, true, func(v uint64) { w.FHandleType = int(v) }},
		}
		for _, f := range fields {
			s, ok := kv[f.key]
			if !ok {
				if f.opt {
					continue
				}
				return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(line), Err: errMissing}
			}
			v, err := parseUintBits([]byte(s), 16, f.bits)
			if err != nil {
				return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(s), Err: err}
			}
			f.set(v)
		}
		if s, ok := kv["f_handle"]; ok {
			h, err := decodeHex(s)
			if err != nil {
				return nil, &ParseError{File: "fdinfo", Field: "f_handle", Value: clip(s), Err: err}
			}
			w.FHandle = h
		}
		out = append(out, w)
	}
	return out, nil
}

// Timerfd is the state of a timerfd.
type Timerfd struct {
	ClockID      int
	Ticks        uint64 // expirations not yet read
	SettimeFlags int    // TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET
	Value        Timespec
	Interval     Timespec
}

// Timespec is a (seconds, nanoseconds) pair as timerfd fdinfo prints it. For
// it_value it is the time left until the next expiry, also for a timer armed
// with an absolute time.
type Timespec struct{ Sec, Nsec uint64 }

// ErrNotThisKind is returned by the FDInfo accessors asked about a kind of
// file the fdinfo is not.
var ErrNotThisKind = errors.New("fdinfo is not of this kind of file")

// Timerfd parses the timer lines of a timerfd's fdinfo. It returns
// ErrNotThisKind when there is no clockid line.
func (fi *FDInfo) Timerfd() (*Timerfd, error) {
	if _, ok := fi.Extra["clockid"]; !ok {
		return nil, ErrNotThisKind
	}
	t := &Timerfd{}
	for _, f := range []struct {
		key  string
		base uint64
		bits uint
		set  func(uint64)
	}{
		{"clockid", 10, 31, func(v uint64) { t.ClockID = int(v) }},
		{"ticks", 10, 64, func(v uint64) { t.Ticks = v }},
		{"settime flags", 8, 31, func(v uint64) { t.SettimeFlags = int(v) }},
	} {
		s, ok := fi.Extra[f.key]
		if !ok {
			return nil, &ParseError{File: "fdinfo", Field: f.key, Err: errMissing}
		}
		v, err := parseUintBits([]byte(s), f.base, f.bits)
		if err != nil {
			return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(s), Err: err}
		}
		f.set(v)
	}
	for _, f := range []struct {
		key string
		dst *Timespec
	}{{"it_value", &t.Value}, {"it_interval", &t.Interval}} {
		s, ok := fi.Extra[f.key]
		if !ok {
			return nil, &ParseError{File: "fdinfo", Field: f.key, Err: errMissing}
		}
		ts, err := parseTimespec(s)
		if err != nil {
			return nil, &ParseError{File: "fdinfo", Field: f.key, Value: clip(s), Err: err}
		}
		*f.dst = ts
	}
	return t, nil
}

// parseTimespec parses "(%llu, %llu)".
func parseTimespec(s string) (Timespec, error) {
	b := []byte(s)
	if len(b) < 2 || b[0] != '(' || b[len(b)-1] != ')' {
		return Timespec{}, errSyntax
	}
	b = b[1 : len(b)-1]
	comma := bytes.IndexByte(b, ',')
	if comma < 0 {
		return Timespec{}, errSyntax
	}
	sec, err := parseDec(trimSpace(b[:comma]))
	if err != nil {
		return Timespec{}, err
	}
	nsec, err := parseDec(trimSpace(b[comma+1:]))
	if err != nil {
		return Timespec{}, err
	}
	return Timespec{Sec: sec, Nsec: nsec}, nil
}

// SignalfdMask returns the signal mask of a signalfd (bit n-1 is signal n),
// or ErrNotThisKind.
func (fi *FDInfo) SignalfdMask() (uint64, error) {
	s, ok := fi.Extra["sigmask"]
	if !ok {
		return 0, ErrNotThisKind
	}
	v, err := parseHex([]byte(s))
	if err != nil {
		return 0, &ParseError{File: "fdinfo", Field: "sigmask", Value: clip(s), Err: err}
	}
	return v, nil
}

// PidfdPID returns the pid a pidfd refers to, as seen from the reader's PID
// namespace (the "Pid:" line; -1 once the process was reaped), or
// ErrNotThisKind.
func (fi *FDInfo) PidfdPID() (int, error) {
	s, ok := fi.Extra["Pid"]
	if !ok {
		return 0, ErrNotThisKind
	}
	v, err := parseInt([]byte(s), bitsInt)
	if err != nil {
		return 0, &ParseError{File: "fdinfo", Field: "Pid", Value: clip(s), Err: err}
	}
	return int(v), nil
}

// splitKV splits "k1: v1 k2:v2 ..." (a blank may follow the colon) into a
// map. The first key may be preceded by blanks.
func splitKV(s string) (map[string]string, error) {
	kv := make(map[string]string, 8)
	b := []byte(s)
	for {
		var key []byte
		key, b = nextField(b)
		if len(key) == 0 {
			return kv, nil
		}
		colon := bytes.IndexByte(key, ':')
		if colon <= 0 {
			return nil, errSyntax
		}
		val := key[colon+1:]
		key = key[:colon]
		if len(val) == 0 {
			val, b = nextField(b)
			if len(val) == 0 {
				return nil, errSyntax
			}
		}
		kv[string(key)] = string(val)
	}
}

func decodeHex(s string) ([]byte, error) {
	if len(s)%2 != 0 {
		return nil, errSyntax
	}
	out := make([]byte, len(s)/2)
	for i := range out {
		v, err := parseHex([]byte(s[2*i : 2*i+2]))
		if err != nil {
			return nil, err
		}
		out[i] = byte(v)
	}
	return out, nil
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

func clip(s string) string {
	if len(s) > maxErrValue {
		return s[:maxErrValue]
	}
	return s
}

func fdinfoErr(line, field string, err error) error {
	return &ParseError{File: "fdinfo", Field: field, Value: clip(line), Err: err}
}

// Locks returns the file locks held through this fd, one per "lock:" line,
// as the kernel prints them in /proc/locks ("1: POSIX  ADVISORY  WRITE
// 1234 00:1f:5678 10 19", "2: FLOCK ...", "3: OFDLCK ...", "4: LEASE ..."),
// with the line's leading blanks removed.
func (fi *FDInfo) Locks() []string {
	var out []string
	for _, line := range fi.Lines {
		if v, ok := strings.CutPrefix(line, "lock:"); ok {
			out = append(out, strings.Join(strings.Fields(v), " "))
		}
	}
	return out
}

// FileLock is a "lock:" line of fdinfo, as /proc/locks prints it.
type FileLock struct {
	Kind   string // POSIX, FLOCK, OFDLCK, LEASE, DELEG
	Mode   string // ADVISORY, MANDATORY; ACTIVE, BREAKING, BREAKER for leases
	Access string // READ, WRITE (UNLCK for a lease being broken)
	PID    int    // the holder's PID as the kernel keeps it (-1 for OFD locks)
	Start  uint64
	End    uint64 // inclusive
	ToEOF  bool   // End is "EOF"
}

// FileLocks parses the locks held through this fd (Locks).
func (fi *FDInfo) FileLocks() ([]FileLock, error) {
	var out []FileLock
	for _, l := range fi.Locks() {
		f := strings.Fields(l)
		// "1:" KIND MODE ACCESS PID MAJ:MIN:INO START END
		if len(f) != 8 || !strings.HasSuffix(f[0], ":") {
			return nil, fdinfoErr(l, "lock", errors.New("not ID: KIND MODE ACCESS PID DEV:INO START END"))
		}
		lk := FileLock{Kind: f[1], Mode: f[2], Access: f[3]}
		pid, err := strconv.Atoi(f[4])
		if err != nil {
			return nil, fdinfoErr(l, "lock pid", err)
		}
		lk.PID = pid
		if lk.Start, err = strconv.ParseUint(f[6], 10, 64); err != nil {
			return nil, fdinfoErr(l, "lock start", err)
		}
		if f[7] == "EOF" {
			lk.ToEOF = true
		} else if lk.End, err = strconv.ParseUint(f[7], 10, 64); err != nil || lk.End < lk.Start {
			if err == nil {
				err = errors.New("end before start")
			}
			return nil, fdinfoErr(l, "lock end", err)
		}
		out = append(out, lk)
	}
	return out, nil
}
