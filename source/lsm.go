package source

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
)

// checkSecurityLabel refuses a process confined by a security module
// (an AppArmor profile, an SELinux context: what runc's apparmorProfile
// and selinuxLabel set) other than migrate's own: the restored process
// would run with the restorer's, which the image cannot be trusted to
// choose and which may allow more. A kernel without such a module (no
// /proc/PID/attr/current) has none to keep.
func checkSecurityLabel(pid int) error {
	mine, err := readLabel("self")
	if err != nil {
		return err
	}
	its, err := readLabel(fmt.Sprint(pid))
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if reason := labelReason(its, mine); reason != "" {
		return &BadTargetError{PID: pid, Reason: reason}
	}
	return nil
}

// readLabel reads /proc/PID/attr/current ("" without a security module
// that has one).
func readLabel(pid string) (string, error) {
	b, err := proc.ReadFile("/proc/" + pid + "/attr/current")
	if errors.Is(err, unix.EINVAL) || errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("security label: %w", err)
	}
	return strings.TrimRight(string(b), "\x00\n"), nil
}

// labelReason says why a process with security label its cannot be
// restored by a migrate whose label is mine ("" if it can).
func labelReason(its, mine string) string {
	if its == mine || (its == "unconfined" && mine == "") {
		return ""
	}
	return fmt.Sprintf("it runs under the security label %q (AppArmor profile or SELinux context), migrate under %q: the restored process would run under the restorer's; a label is not carried", its, mine)
}
