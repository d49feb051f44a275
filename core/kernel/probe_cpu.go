package kernel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/raw"
)

// ProbeXSAVE reports the XSAVE state components this CPU and kernel
// enable (XCR0): a process that used, or may use, one this host lacks
// is not restored here (target.CPUFeatureError).
func ProbeXSAVE(context.Context) (string, error) {
	x, ok := raw.XCR0()
	if !ok {
		return "", unsupported(FeatureXSAVE, "the kernel does not use XSAVE (no OSXSAVE in cpuid): only x87 and SSE state", nil)
	}
	return fmt.Sprintf("%s (XCR0 %#x)", core.XSAVENames(x), x), nil
}

// ProbeTimeNamespace makes a time namespace and sets its offsets, as a
// restore does for processes whose clocks differ from this host's
// (unshare(CLONE_NEWTIME) on a thread that then dies, so nothing ever
// enters the namespace).
func ProbeTimeNamespace(ctx context.Context) (string, error) {
	if _, err := os.Stat("/proc/self/ns/time"); errors.Is(err, fs.ErrNotExist) {
		return "", unsupported(FeatureTimeNS, "no /proc/self/ns/time: a kernel without CONFIG_TIME_NS", nil)
	}
	errc := make(chan error, 1)
	osthread.Go(func() { // a thread of its own, that ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWTIME); err != nil {
			errc <- unsupported(FeatureTimeNS, "unshare(CLONE_NEWTIME)", err)
			return
		}
		path := fmt.Sprintf("/proc/%d/timens_offsets", unix.Gettid())
		if err := os.WriteFile(path, []byte("1 1000 0\n7 -1 0\n"), 0); err != nil {
			errc <- unsupported(FeatureTimeNS, "set a new time namespace's offsets", err)
			return
		}
		errc <- nil
	})
	select {
	case err := <-errc:
		if err != nil {
			return "", err
		}
		return "a time namespace made and its offsets set: restored processes keep their monotonic clocks", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
