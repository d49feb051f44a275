package netlock

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/procmig/migrate/core/proc"
)

// Table names. A lock table of a running migrate is
//
//	migrate_<pid>_<start>_<seq>
//
// where pid is the owner's process id (in the pid namespace of the /proc the
// owner sees), start its start time in clock ticks after boot (field 22 of
// /proc/PID/stat), which tells the owner from a later process that reuses
// the pid, and seq counts the owner's locks. A lock that outlives its owner
// on purpose (Options.Keep) is
//
//	migrate_keep_<16 lowercase hex digits>
//
// and has no owner: only Remove deletes it.
const (
	namePrefix = "migrate_"
	keepPrefix = namePrefix + "keep_"
	keepHexLen = 16
)

// ErrForeignTable is returned by Remove for a table name that Install does not
// make, so that an operator's typo never deletes someone else's table.
var ErrForeignTable = errors.New("netlock: not a table made by netlock")

// owner identifies the process that made a (non-Keep) lock table.
type owner struct {
	PID   int
	Start uint64 // clock ticks after boot, /proc/PID/stat field 22
	Seq   uint64
}

func (o owner) name() string {
	return namePrefix + strconv.Itoa(o.PID) + "_" +
		strconv.FormatUint(o.Start, 10) + "_" + strconv.FormatUint(o.Seq, 10)
}

// lockSeq numbers this process's locks, so that one process can hold several.
var lockSeq atomic.Uint64

// self describes this process as the owner of a new lock.
func self() (owner, error) {
	pid := os.Getpid()
	st, err := proc.ReadStat(pid)
	if err != nil {
		return owner{}, fmt.Errorf("netlock: own start time: %w", err)
	}
	return owner{PID: pid, Start: st.StartTime, Seq: lockSeq.Add(1)}, nil
}

func keepName() (string, error) {
	var b [keepHexLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("netlock: %w", err)
	}
	return keepPrefix + hex.EncodeToString(b[:]), nil
}

// parseName tells whether name is one of ours: a Keep table (keep true), or
// a table owned by the returned owner. Anything else, including names with
// signs, leading zeros or extra fields, is not ours (ok false).
func parseName(name string) (o owner, keep, ok bool) {
	if rest, found := strings.CutPrefix(name, keepPrefix); found {
		if len(rest) != keepHexLen {
			return owner{}, false, false
		}
		for _, c := range []byte(rest) {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return owner{}, false, false
			}
		}
		return owner{}, true, true
	}
	rest, found := strings.CutPrefix(name, namePrefix)
	if !found {
		return owner{}, false, false
	}
	f := strings.Split(rest, "_")
	if len(f) != 3 {
		return owner{}, false, false
	}
	var n [3]uint64
	for i, s := range f {
		v, ok := parseDecimal(s)
		if !ok {
			return owner{}, false, false
		}
		n[i] = v
	}
	if n[0] == 0 || n[0] > 1<<22 { // PID_MAX_LIMIT
		return owner{}, false, false
	}
	return owner{PID: int(n[0]), Start: n[1], Seq: n[2]}, false, true
}

// parseDecimal accepts the canonical decimal form of a uint64 only, so that
// every parsed name prints back to itself.
func parseDecimal(s string) (uint64, bool) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// alive reports whether the owner of a lock still runs. A zombie counts as
// dead: it will never unlock. When /proc cannot tell (a permission error),
// the owner is taken to be alive, so that a live lock is never removed.
func (o owner) alive() bool {
	st, err := proc.ReadStat(o.PID)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errESRCH)
	}
	if st.StartTime != o.Start {
		return false // the pid now names another process
	}
	return st.State != 'Z' && st.State != 'X'
}

// IsLockTable says whether an nftables table of this name is a network
// lock's (a running migrate's, or one kept on purpose).
func IsLockTable(name string) bool {
	_, _, ok := parseName(name)
	return ok
}
