package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// readAudit reads the audit identity of process pid, for the image: nil
// on a kernel without audit login uids (no /proc/PID/loginuid: nothing a
// restore could give back differently).
func readAudit(pid int) (*core.Audit, error) {
	l, s, err := proc.ReadAudit(pid)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat("/proc/self/loginuid"); errors.Is(serr, fs.ErrNotExist) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("process %d: audit identity: %w", pid, err)
	}
	return &core.Audit{LoginUID: l, SessionID: s}, nil
}
