package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// namespaceKinds are the namespaces a process lives in, as /proc/PID/ns
// names them.
var namespaceKinds = []string{"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}

// otherNamespaces returns the kinds of namespace in which process pid
// differs from migrate itself. A restore puts the process into the
// restorer's namespaces, so a process of a container would come back
// outside it, seeing another hostname, other mounts, other PIDs: such a
// process is refused until migrate restores namespaces.
func otherNamespaces(pid int) ([]string, error) {
	var differ []string
	for _, kind := range namespaceKinds {
		mine, err := os.Readlink("/proc/self/ns/" + kind)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a kernel without this kind of namespace
		}
		if err != nil {
			return nil, err
		}
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
		if err != nil {
			return nil, fmt.Errorf("process %d: namespace %s: %w", pid, kind, err)
		}
		if its != mine && kind != "mnt" { // a mount namespace is carried (mounts.go)
			differ = append(differ, kind)
		}
	}
	return differ, nil
}

// checkNamespaces refuses a process that lives in namespaces of its own.
func checkNamespaces(pid int) error {
	differ, err := otherNamespaces(pid)
	if err != nil {
		return err
	}
	// A time namespace of its own is carried: its offsets are in the
	// image's clocks (clocks.go).
	differ = slices.DeleteFunc(differ, func(kind string) bool { return kind == "time" })
	if err := checkTimeNamespace(pid); err != nil {
		return err
	}
	if len(differ) > 0 {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("it lives in %s namespaces other than migrate's (a container?): "+
			"its restore would put it in migrate's own; run migrate inside them (nsenter) or move the container whole when migrate can", strings.Join(differ, ", "))}
	}
	return nil
}
