package handoff

import (
	"fmt"

	"github.com/procmig/migrate/core"
)

// LiveLayout is the body of a round's Layout message in a live migration:
// the process as far as it is known before the freeze (identity,
// executable, directories) and the round's memory layout.
type LiveLayout struct {
	Process core.Process `json:"process"`
	// FDs is how many fds the process had open as the round began: the
	// target makes room for their restore before the freeze.
	FDs int `json:"fds,omitempty"`
	// Tree are the other processes of the tree being moved, parents
	// first, described as Process is (a zombie as core.Zombie says):
	// empty for a single process (and in the layouts of a peer that
	// moves single processes only). With a tree, each process that is not
	// a zombie has a page stream of its own, which begins with its PID
	// (PagesPIDLen bytes, little-endian); a single process's stream has
	// no such prefix.
	Tree []core.Process `json:"tree,omitempty"`
	// Shm are the System V shared memory segments the processes attach
	// (core.ShmSegment, Paged: their pages come in the page streams of
	// the processes that attach them). The target creates them at the
	// first layout, and refuses if it has a segment with one's ID or key;
	// later layouts list the same ones.
	Shm []core.ShmSegment `json:"shm,omitempty"`
	// Clocks are the source's clocks as the layout was made: the target
	// makes the time namespace of the processes from the first layout's,
	// before it creates them (core.Clocks).
	Clocks *core.Clocks `json:"clocks,omitempty"`
	// CPU are the source CPU's XSAVE features (InUse is known only at
	// the freeze): the target refuses at the first layout a process its
	// CPU could not run.
	CPU *core.CPUFeatures `json:"cpu,omitempty"`
	// Namespaces are those of a container moved whole (its init is
	// Process): the kinds to make, and the processes' PIDs inside. The
	// threads' and the System V objects come with the state.
	Namespaces *core.Namespaces `json:"namespaces,omitempty"`
	// Mounts is the processes' mount namespace, when not the source
	// migrate's: the target creates them in a new one built so, its tmpfs
	// mounts empty (their files come with the state's image, whose table
	// must be this one).
	Mounts *core.MountNS `json:"mounts,omitempty"`
	// CgroupLimits are the limits of the processes' cgroup v2 cgroups:
	// the target makes those it lacks at the first layout
	// (core.CgroupLimits).
	CgroupLimits []core.CgroupLimits `json:"cgroup_limits,omitempty"`
	// Members, in the first layout, says the tree is moved whole as it
	// changes: each page stream begins with its PID even with Tree empty,
	// and a later round's layout may name processes the one before did
	// not (forked since: the target creates them, out of their parent,
	// and a page stream each, opened before the layout, follows) and leave
	// out ones it named (gone: the target removes them); a process that
	// exited since comes as a zombie. Without it the tree keeps the shape
	// of the first layout.
	Members bool `json:"members,omitempty"`
	// Streams, in the first layout, is how many page streams each process
	// with pages has, all opened as one would be (each beginning with the
	// PID, with a tree), 1..MaxPageStreams; 0 means 1. A process's pages
	// are spread over its streams; a round's pages may go in any of them,
	// and each carries every round's barrier, so the target applies a
	// page of round k+1 only once every stream passed round k's barrier.
	Streams int `json:"streams,omitempty"`
	// Sync, in the first layout, are the trees (directories or files,
	// absolute paths) the source copies to the target
	// (`migrate --to --sync PATH`): their files come on a stream of
	// their own (transport.KindFiles, internal/filesync's sync stream),
	// opened after the first round's page streams, whose last record the
	// source writes in the frozen window, before the State. The target
	// writes nowhere else, and puts the files in place before it
	// restores.
	Sync []string `json:"sync,omitempty"`
}

// MaxPageStreams bounds LiveLayout.Streams.
const MaxPageStreams = 16

// PagesPIDLen is the length of the PID that begins each page stream of a
// tree (see LiveLayout.Tree and LiveLayout.Members).
const PagesPIDLen = 4

// LiveState is the body of the State message: the final image and the
// contents of its blobs (files/...).
type LiveState struct {
	Image core.Image        `json:"image"`
	Blobs map[string][]byte `json:"blobs,omitempty"`
	// Inherit gives, for each external object of the image (core.FD
	// External), the absolute path on the target that the restore opens
	// in its place (`migrate --to --inherit-fd ID=PATH`).
	Inherit map[string]string `json:"inherit,omitempty"`
	// PostCopy, if set, says the process resumes with pages missing
	// (PostCopyState).
	PostCopy *PostCopyState `json:"post_copy,omitempty"`
}

// Renumbered is a process or thread of a container moved live whose PID
// outside the container is another on the target than on the source
// (where its own was taken there: only the PIDs inside matter to the
// container's processes). PID is the source's, TargetPID the target's. The
// target lists them in the body of its Resumed ("renumbered"), at most
// MaxRenumbered of them.
type Renumbered struct {
	PID       int `json:"pid"`
	TargetPID int `json:"target_pid"`
}

func (r Renumbered) String() string { return fmt.Sprintf("%d->%d", r.PID, r.TargetPID) }

// MaxRenumbered bounds the Renumbered a Resumed lists.
const MaxRenumbered = 1 << 16
