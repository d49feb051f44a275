package proc

import (
	"strconv"
	"strings"
)

// ReadAudit reads the audit login uid and session id of process pid
// (/proc/PID/loginuid and sessionid; 4294967295 when unset).
func ReadAudit(pid int) (loginuid, sessionid uint32, err error) {
	read := func(name string) (uint32, error) {
		b, err := readFile(pidPath(pid, name), 16)
		if err != nil {
			return 0, err
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil {
			return 0, &ParseError{File: name, Value: string(b), Err: err}
		}
		return uint32(v), nil
	}
	if loginuid, err = read("loginuid"); err != nil {
		return 0, 0, err
	}
	sessionid, err = read("sessionid")
	return loginuid, sessionid, err
}
