package handoff

import (
	"fmt"
	"slices"

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
	// SameVMAs (transport.FeatureSameVMAs) are the processes of
	// Process and Tree whose areas are those the previous layout listed
	// for them, but for their page counts: their VMAs are left out, and
	// the target fills them in. Never in the first layout.
	SameVMAs []SameVMAs `json:"same_vmas,omitempty"`
}

// SameVMAs names a process whose areas are left out of a layout or the
// State because they are those the layout before listed for it, in the
// same order, but for their page counts (core.VMA.Pages), which Pages
// gives, one for each area.
type SameVMAs struct {
	PID   int      `json:"pid"`
	Pages []uint64 `json:"pages"`
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
	// SameVMAs (transport.FeatureSameVMAs) are the processes of the
	// image whose areas are those the last layout (the final round's)
	// listed for them, but for their page counts: their VMAs are left
	// out of the image, and the target fills them in.
	SameVMAs []SameVMAs `json:"same_vmas,omitempty"`
}

// LeaveOutSame leaves out of procs the areas of each process that are
// those prev holds for its PID (as the layout before listed them) but for
// their page counts, and returns the entries that say so, for
// LiveLayout.SameVMAs or LiveState.SameVMAs. The areas are compared
// field by field, so that the target, filling them in from that layout,
// gets exactly what it would have decoded.
func LeaveOutSame(procs []*core.Process, prev map[int][]core.VMA) []SameVMAs {
	var out []SameVMAs
	for _, p := range procs {
		was, ok := prev[p.PID]
		if p.Zombie != nil || !ok || len(p.VMAs) == 0 || !sameAreas(was, p.VMAs) {
			continue
		}
		s := SameVMAs{PID: p.PID, Pages: make([]uint64, len(p.VMAs))}
		for i := range p.VMAs {
			s.Pages[i] = p.VMAs[i].Pages
		}
		out = append(out, s)
		p.VMAs = nil
	}
	return out
}

// sameAreas says whether a and b list the same areas, but for their page
// counts.
func sameAreas(a, b []core.VMA) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameArea(&a[i], &b[i]) {
			return false
		}
	}
	return true
}

// sameArea says whether x and y are the same area, but for their page
// counts: every field compared, as reflect.DeepEqual would (a nil slice
// is not an empty one), ten times faster (a tree has thousands of areas,
// compared in the frozen window). TestSameAreaFields fails when core.VMA,
// core.FileRef or core.Extent gains a field this does not compare.
func sameArea(x, y *core.VMA) bool {
	return x.Start == y.Start && x.End == y.End && x.Prot == y.Prot && x.Flags == y.Flags && x.Kind == y.Kind &&
		x.Name == y.Name && x.Offset == y.Offset && sameFile(x.File, y.File) && x.Shm == y.Shm &&
		sameSlice(x.Madvise, y.Madvise) && x.MayWrite == y.MayWrite && x.Seals == y.Seals && x.Lock == y.Lock &&
		x.Hash == y.Hash && sameSlice(x.Code, y.Code)
}

func sameFile(x, y *core.FileRef) bool {
	if x == nil || y == nil {
		return x == y
	}
	return x.Path == y.Path && x.Size == y.Size && x.Mtime == y.Mtime && x.Mode == y.Mode && x.UID == y.UID &&
		x.GID == y.GID && x.Dev == y.Dev && x.Ino == y.Ino && x.Deleted == y.Deleted && x.Blob == y.Blob &&
		sameSlice(x.Extents, y.Extents) && x.SHA256 == y.SHA256
}

// sameSlice is slices.Equal that tells a nil slice from an empty one, as
// reflect.DeepEqual does.
func sameSlice[E comparable](x, y []E) bool {
	return (x == nil) == (y == nil) && slices.Equal(x, y)
}

// FillSame fills in the areas same left out of procs (LeaveOutSame) from
// prev, the areas the layout before listed by PID, with the page counts
// same gives. An entry must name a process of procs once, not a
// zombie, with no areas of its own, that prev holds, with a page count
// for each area.
func FillSame(procs []*core.Process, same []SameVMAs, prev map[int][]core.VMA) error {
	byPID := make(map[int]*core.Process, len(procs))
	for _, p := range procs {
		byPID[p.PID] = p
	}
	done := make(map[int]bool, len(same))
	for _, s := range same {
		p := byPID[s.PID]
		switch was, ok := prev[s.PID]; {
		case p == nil:
			return fmt.Errorf("the areas of process %d are those of the last layout, but it is not listed", s.PID)
		case done[s.PID]:
			return fmt.Errorf("the areas of process %d are said twice to be those of the last layout", s.PID)
		case p.Zombie != nil:
			return fmt.Errorf("process %d is a zombie, with no areas to take from the last layout", s.PID)
		case len(p.VMAs) > 0:
			return fmt.Errorf("process %d lists areas and says they are those of the last layout", s.PID)
		case !ok:
			return fmt.Errorf("the areas of process %d are said to be those of the last layout, which did not list it", s.PID)
		case len(s.Pages) != len(was):
			return fmt.Errorf("process %d: %d page counts for the %d areas of the last layout", s.PID, len(s.Pages), len(was))
		default:
			done[s.PID] = true
			p.VMAs = CloneVMAs(was)
			for i := range p.VMAs {
				p.VMAs[i].Pages = s.Pages[i]
			}
		}
	}
	return nil
}

// Procs are root and the processes of tree, as LeaveOutSame, FillSame and
// AreasOf take them.
func Procs(root *core.Process, tree []core.Process) []*core.Process {
	out := []*core.Process{root}
	for i := range tree {
		out = append(out, &tree[i])
	}
	return out
}

// AreasOf are the areas of procs by PID (but zombies'), copies that
// nothing done to procs afterwards changes: the areas of a layout, for
// LeaveOutSame and FillSame to compare the next one with.
func AreasOf(procs []*core.Process) map[int][]core.VMA {
	out := make(map[int][]core.VMA, len(procs))
	for _, p := range procs {
		if p.Zombie == nil {
			out[p.PID] = CloneVMAs(p.VMAs)
		}
	}
	return out
}

// CloneVMAs is a deep copy of vmas. The file references are copied into
// one array, not one allocation each: a tree's layout is thousands of
// areas, cloned in the frozen window (AreasOf, FillSame), where fresh
// memory costs a page fault a page.
func CloneVMAs(vmas []core.VMA) []core.VMA {
	out := slices.Clone(vmas)
	n := 0
	for i := range out {
		if out[i].File != nil {
			n++
		}
	}
	files := make([]core.FileRef, 0, n)
	for i := range out {
		v := &out[i]
		if v.File != nil {
			files = append(files, *v.File)
			f := &files[len(files)-1]
			f.Extents = slices.Clone(f.Extents)
			v.File = f
		}
		v.Madvise = slices.Clone(v.Madvise)
		v.Code = slices.Clone(v.Code)
	}
	return out
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
