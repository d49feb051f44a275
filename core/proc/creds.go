package proc

import "github.com/procmig/migrate/core"

// Creds returns the credentials the status file shows, in the image's
// form: all but the securebits, which /proc does not show.
func (s *Status) Creds() *core.Creds {
	return &core.Creds{
		UID:    [3]uint32{s.UID[0], s.UID[1], s.UID[2]},
		GID:    [3]uint32{s.GID[0], s.GID[1], s.GID[2]},
		FSUID:  s.UID[3],
		FSGID:  s.GID[3],
		Groups: s.Groups,
		CapInh: s.CapInh, CapPrm: s.CapPrm, CapEff: s.CapEff,
		CapBnd: s.CapBnd, CapAmb: s.CapAmb,
		NoNewPrivs: s.NoNewPrivs,
	}
}
