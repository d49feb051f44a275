package target

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// Inherit is a file a restore gives the processes in place of an object
// outside their dump (an fd of kind core.FDExternal, which ID names as the
// image does: "pipe:[1234]", "socket:[5678]"): File, an open file of the
// caller's (`--inherit-fd ID=fd:N`), or Path, opened in the access mode
// of the original fd (`--inherit-fd ID=PATH`: a FIFO, a file).
type Inherit struct {
	ID   string
	File *os.File
	Path string
}

// InheritError says that the inherited files do not match the image's
// external objects: one is missing, or one names no object of the image.
type InheritError struct {
	ID     string
	Reason string
}

func (e *InheritError) Error() string {
	return fmt.Sprintf("--inherit-fd %s: %s", e.ID, e.Reason)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *InheritError) AbortCode() string { return "inherit" }

// ParseInherit parses `ID=fd:N` (fd N of the calling process, which must
// be open) or `ID=PATH`.
func ParseInherit(s string) (Inherit, error) {
	id, what, ok := strings.Cut(s, "=")
	if !ok || what == "" {
		return Inherit{}, fmt.Errorf("--inherit-fd %q: want ID=fd:N or ID=PATH", s)
	}
	if !core.ValidExternal(id) {
		return Inherit{}, fmt.Errorf("--inherit-fd %q: %q is not an object an image names (pipe:[N] or socket:[N], as /proc/PID/fd shows them)", s, id)
	}
	if n, ok := strings.CutPrefix(what, "fd:"); ok {
		var fd int
		if _, err := fmt.Sscanf(n, "%d", &fd); err != nil || fd < 0 || fmt.Sprint(fd) != n {
			return Inherit{}, fmt.Errorf("--inherit-fd %q: fd %q is not a number", s, n)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return Inherit{}, fmt.Errorf("--inherit-fd %q: fd %d is not open: %w", s, fd, err)
		}
		return Inherit{ID: id, File: os.NewFile(uintptr(fd), id)}, nil
	}
	if !strings.HasPrefix(what, "/") {
		return Inherit{}, fmt.Errorf("--inherit-fd %q: the path must be absolute", s)
	}
	return Inherit{ID: id, Path: what}, nil
}

// checkInherit checks, before anything is built, that every external
// object of img is given once in inh, each in the access mode its fds had,
// and that inh names no other.
func checkInherit(img *core.Image, inh []Inherit) (map[string]*Inherit, error) {
	want := map[string][]*core.FD{}
	for _, p := range img.Processes() {
		for i := range p.Process.FDs {
			if fd := &p.Process.FDs[i]; fd.Kind == core.FDExternal {
				want[fd.External] = append(want[fd.External], fd)
			}
		}
	}
	out := map[string]*Inherit{}
	for i := range inh {
		in := &inh[i]
		if out[in.ID] != nil {
			return nil, &InheritError{ID: in.ID, Reason: "given twice"}
		}
		fds, ok := want[in.ID]
		if !ok {
			return nil, &InheritError{ID: in.ID, Reason: "the image holds no such object"}
		}
		if in.File == nil && strings.HasPrefix(in.ID, "socket:") {
			return nil, &InheritError{ID: in.ID, Reason: "a socket cannot be opened by path: give an fd (ID=fd:N)"}
		}
		if in.File != nil {
			fl, err := unix.FcntlInt(in.File.Fd(), unix.F_GETFL, 0)
			if err != nil {
				return nil, &InheritError{ID: in.ID, Reason: err.Error()}
			}
			for _, fd := range fds {
				if fl&unix.O_ACCMODE != fd.Flags&unix.O_ACCMODE {
					return nil, &InheritError{ID: in.ID, Reason: fmt.Sprintf("the file given is open %s; the process had it open %s", accessName(fl), accessName(fd.Flags))}
				}
			}
		}
		out[in.ID] = in
	}
	var missing []string
	for id := range want {
		if out[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, &InheritError{ID: missing[0], Reason: fmt.Sprintf("the image holds %s from outside its dump: give each with --inherit-fd '%s=fd:N' (an fd of migrate's) or '%s=PATH'",
			strings.Join(missing, ", "), missing[0], missing[0])}
	}
	return out, nil
}

func accessName(flags int) string {
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		return "for reading"
	case unix.O_WRONLY:
		return "for writing"
	}
	return "for reading and writing"
}

// openExternal opens, in the agent, the file given for an external fd.
func (r *restorer) openExternal(fd *core.FD) (*os.File, error) {
	in := r.inherit[fd.External]
	if in == nil {
		return nil, &InheritError{ID: fd.External, Reason: "not given (--inherit-fd)"}
	}
	var f *os.File
	var err error
	if in.File != nil {
		f, err = dupFile(in.File)
	} else {
		// O_NONBLOCK: a FIFO without its other end fails (ENXIO) rather
		// than wait; the original's flags are set after.
		f, err = os.OpenFile(in.Path, fd.Flags&unix.O_ACCMODE|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if errors.Is(err, unix.ENXIO) {
			err = fmt.Errorf("%w (a FIFO no process has open for reading)", err)
		}
	}
	if err != nil {
		return nil, &InheritError{ID: fd.External, Reason: err.Error()}
	}
	if err := setFlags(f, fd.Flags); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
