package source

import (
	"fmt"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// readAudit reads the audit identity of process pid, for the image.
func readAudit(pid int) (*core.Audit, error) {
	l, s, err := proc.ReadAudit(pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: audit identity: %w", pid, err)
	}
	return &core.Audit{LoginUID: l, SessionID: s}, nil
}
