package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/procmig/migrate/core/proc"
)

// The kernel maps code and data of its own into every process: [vdso] (the
// code of clock_gettime and friends) and the data pages it reads, [vvar]
// and, since Linux 6.13 or so, [vvar_vclock]. The code finds the data at
// fixed offsets from itself, so this host's mappings can take the
// dumped process's places only if both kernels lay them out the same way
// (same names, sizes and offsets) with the same code (which the restorer
// compares byte by byte); otherwise the restorer maps a proxy of the old
// vdso there (target's vdsoproxy.go).

// vdsoNames are the special mappings that move together.
var vdsoNames = []string{"[vdso]", "[vvar]", "[vvar_vclock]"}

// IsVDSOName reports whether a mapping name is one of the special mappings
// that make up the vdso layout.
func IsVDSOName(name string) bool {
	for _, n := range vdsoNames {
		if name == n {
			return true
		}
	}
	return false
}

// ErrVDSOMismatch matches the error of VDSO.Compatible.
var ErrVDSOMismatch = errors.New("vdso layout differs")

// Area is a mapped range with the name /proc/PID/maps shows for it.
type Area struct {
	Name  string `json:"name"`
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// Size is the length of the area in bytes.
func (a Area) Size() uint64 { return a.End - a.Start }

// VDSO is the layout of the special mappings of one process, sorted by
// address.
type VDSO struct {
	Areas []Area `json:"areas"`
}

// VDSOLayout picks the special mappings out of a process's mappings, in any
// order (other names are ignored). A process without a [vdso] (vdso=0 on
// the kernel command line) gives an empty layout.
func VDSOLayout(maps []Area) (VDSO, error) {
	var v VDSO
	seen := map[string]bool{}
	for _, m := range maps {
		if !IsVDSOName(m.Name) {
			continue
		}
		if seen[m.Name] {
			return VDSO{}, fmt.Errorf("%s mapped twice", m.Name)
		}
		if m.End <= m.Start {
			return VDSO{}, fmt.Errorf("%s: bad range %#x-%#x", m.Name, m.Start, m.End)
		}
		seen[m.Name] = true
		v.Areas = append(v.Areas, m)
	}
	if len(v.Areas) > 0 && !seen["[vdso]"] {
		return VDSO{}, fmt.Errorf("%s without [vdso]", v.Areas[0].Name)
	}
	sort.Slice(v.Areas, func(i, j int) bool { return v.Areas[i].Start < v.Areas[j].Start })
	return v, nil
}

// Empty reports whether the process has no vdso.
func (v VDSO) Empty() bool { return len(v.Areas) == 0 }

// Anchor is the start address of [vdso], which offsets are relative to
// (0 when Empty).
func (v VDSO) Anchor() uint64 {
	for _, a := range v.Areas {
		if a.Name == "[vdso]" {
			return a.Start
		}
	}
	return 0
}

// Start and End bound all the areas.
func (v VDSO) Start() uint64 {
	if v.Empty() {
		return 0
	}
	return v.Areas[0].Start
}

func (v VDSO) End() uint64 {
	if v.Empty() {
		return 0
	}
	return v.Areas[len(v.Areas)-1].End
}

// Offset is the start of a relative to [vdso].
func (v VDSO) Offset(a Area) int64 { return int64(a.Start) - int64(v.Anchor()) }

// String prints each area with its size and offset from [vdso], in address
// order: "[vvar] 0x4000 @-0x6000, [vvar_vclock] 0x2000 @-0x2000, [vdso] 0x2000 @+0x0".
func (v VDSO) String() string {
	if v.Empty() {
		return "no vdso"
	}
	parts := make([]string, len(v.Areas))
	for i, a := range v.Areas {
		off := v.Offset(a)
		sign := "+"
		if off < 0 {
			sign, off = "-", -off
		}
		parts[i] = fmt.Sprintf("%s %#x @%s%#x", a.Name, a.Size(), sign, off)
	}
	return strings.Join(parts, ", ")
}

// Compatible reports, with an error matching ErrVDSOMismatch, whether a
// process laid out like v (the dumped one) can take the special mappings
// of a kernel laid out like here at its own places: the same areas, sizes
// and offsets from [vdso]. (Otherwise a restore maps a proxy of its vdso.)
func (v VDSO) Compatible(here VDSO) error {
	if v.String() == here.String() {
		return nil
	}
	return fmt.Errorf("%w: image has %s; this kernel has %s", ErrVDSOMismatch, v, here)
}

// ReadVDSO reads the vdso layout of process pid from /proc/PID/maps.
func ReadVDSO(pid int) (VDSO, error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return VDSO{}, err
	}
	return VDSOLayout(MapsAreas(maps))
}

// MapsAreas turns parsed /proc/PID/maps lines into Areas.
func MapsAreas(maps []proc.Mapping) []Area {
	out := make([]Area, len(maps))
	for i, m := range maps {
		out[i] = Area{Name: m.Path, Start: m.Start, End: m.End}
	}
	return out
}

// ProbeVDSO reports the vdso layout of this process and the functions
// its vdso exports. Where the layout or the code differs between the
// dumping and the restoring host, the restore goes through a proxy of
// the old vdso, which needs each of its functions here (or one that is a
// system call).
func ProbeVDSO(ctx context.Context) (string, error) {
	v, err := ReadVDSO(os.Getpid())
	if err != nil {
		return "", err
	}
	if v.Empty() {
		return "", unsupported(FeatureVDSO, "no [vdso] mapped (vdso=0?)", nil)
	}
	_, img, err := OwnVDSO()
	if err != nil {
		return "", err
	}
	funcs, err := VDSOFuncs(img)
	if err != nil {
		return "", err
	}
	var names []string
	for _, f := range funcs {
		if n, ok := strings.CutPrefix(f.Name, "__vdso_"); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return v.String() + "; functions " + strings.Join(names, " "), nil
}
