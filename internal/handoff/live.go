package handoff

import "github.com/procmig/migrate/core"

// LiveLayout is the body of a round's Layout message in a live migration:
// the process as far as it is known before the freeze (identity,
// executable, directories) and the round's memory layout.
type LiveLayout struct {
	Process core.Process `json:"process"`
	// FDs is how many fds the process had open as the round began: the
	// target makes room for their restore before the freeze.
	FDs int `json:"fds,omitempty"`
}

// LiveState is the body of the State message: the final image and the
// contents of its blobs (files/...).
type LiveState struct {
	Image core.Image        `json:"image"`
	Blobs map[string][]byte `json:"blobs,omitempty"`
}
