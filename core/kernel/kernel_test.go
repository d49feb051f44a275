package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// required reports whether CI demands the feature: MIGRATE_REQUIRE_FEATURES
// is a comma-separated list of feature names, or "all".
func required(name string) bool {
	for _, n := range strings.Split(os.Getenv("MIGRATE_REQUIRE_FEATURES"), ",") {
		if n = strings.TrimSpace(n); n == "all" || n == name {
			return true
		}
	}
	return false
}

// checkProbe runs a probe and judges its answer: a probe must either work
// or say why the feature is missing; failing to run is a test failure, and
// a missing feature skips the test unless it is required.
func checkProbe(t *testing.T, name string, run func(context.Context) (string, error)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	detail, err := run(ctx)
	switch {
	case err == nil:
		if detail == "" {
			t.Errorf("%s works but gives no detail", name)
		}
		t.Logf("%s: %s", name, detail)
		return detail
	case errors.Is(err, ErrNotSupported):
		var uf *UnsupportedFeatureError
		if !errors.As(err, &uf) || uf.Name != name || uf.Reason == "" {
			t.Fatalf("%s: unsupported error without name and reason: %#v", name, err)
		}
		if required(name) {
			t.Fatalf("%s is required (MIGRATE_REQUIRE_FEATURES) but missing: %v", name, err)
		}
		t.Skipf("%s missing in this kernel: %v", name, err)
	default:
		t.Fatalf("%s probe could not run: %v", name, err)
	}
	return ""
}

func TestProbePtraceSeize(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeaturePtraceSeize, ProbePtraceSeize)
}

func TestProbePidfdGetfd(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeaturePidfdGetfd, ProbePidfdGetfd)
}

func TestProbeClone3SetTID(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureClone3, ProbeClone3SetTID)
}

func TestProbeMMMap(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureMMMap, ProbeMMMap)
}

func TestProbeProcessVM(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureProcessVM, ProbeProcessVM)
}

func TestProbeSoftDirty(t *testing.T) {
	checkProbe(t, FeatureSoftDirty, ProbeSoftDirty)
}

func TestProbeUffdWP(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureUffdWP, ProbeUffdWP)
}

func TestProbeTCPRepair(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureTCPRepair, ProbeTCPRepair)
}

func TestProbeVDSO(t *testing.T) {
	d := checkProbe(t, FeatureVDSO, ProbeVDSO)
	if !strings.Contains(d, "[vdso]") || !strings.Contains(d, " clock_gettime") {
		t.Errorf("detail %q does not name [vdso] and clock_gettime", d)
	}
}

func TestProbeTimeNamespace(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureTimeNS, ProbeTimeNamespace)
}

func TestProbeXSAVE(t *testing.T) {
	d := checkProbe(t, FeatureXSAVE, ProbeXSAVE)
	if !strings.Contains(d, "SSE") {
		t.Errorf("detail %q does not name SSE", d)
	}
}

// TestProbeCgroupFreezer: where cgroup2 is mounted with this process's
// cgroup and has a freezer, the probe works, and leaves no cgroup behind.
func TestProbeCgroupFreezer(t *testing.T) {
	needRoot(t)
	checkProbe(t, FeatureCgroupFreezer, ProbeCgroupFreezer)
	matches, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/migrate-probe-%d", os.Getpid()))
	more, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/migrate-probe-%d", os.Getpid()))
	if len(matches)+len(more) > 0 {
		t.Errorf("probe cgroups left: %v %v", matches, more)
	}
}

// A cancelled context stops a probe with the context's error, and kills
// and reaps its helper (TestMain checks the reaping).
func TestProbeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ProbeProcessVM(ctx)
	if err == nil || errors.Is(err, ErrNotSupported) {
		t.Fatalf("cancelled probe: got %v, want a probe failure", err)
	}
}

func TestCheck(t *testing.T) {
	needRoot(t)
	injected := errors.New("no tracer here")
	feats := Check(context.Background(), CheckOptions{Inject: func() error { return injected }})
	var names []string
	for _, f := range feats {
		names = append(names, f.Name)
		if f.ProbeFailed() {
			t.Errorf("%s: probe failed: %v", f.Name, f.Err)
		}
		if f.OK != (f.Err == nil) {
			t.Errorf("%s: OK=%v with Err=%v", f.Name, f.OK, f.Err)
		}
		if f.Detail == "" {
			t.Errorf("%s: no detail", f.Name)
		}
	}
	want := []string{FeaturePtraceSeize, FeatureInjection, FeaturePidfdGetfd, FeatureClone3, FeatureMMMap,
		FeatureProcessVM, FeatureSoftDirty, FeatureUffdWP, FeatureTCPRepair, FeatureVDSO, FeatureTimeNS, FeatureXSAVE,
		FeatureCgroupFreezer}
	if !slices.Equal(names, want) {
		t.Fatalf("features %q, want %q", names, want)
	}
	inj := feats[1]
	if inj.OK || !errors.Is(inj.Err, ErrNotSupported) || !errors.Is(inj.Err, injected) {
		t.Errorf("failing injector: got %+v, want unsupported wrapping the injector's error", inj)
	}

	feats = Check(context.Background(), CheckOptions{})
	if s := feats[1].Status(); s != "not probed" {
		t.Errorf("nil injector: status %q, want not probed", s)
	}
}

func TestCheckCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, f := range Check(ctx, CheckOptions{}) {
		if !f.ProbeFailed() || !errors.Is(f.Err, context.Canceled) {
			t.Errorf("%s: got %s (%v), want a failed probe with context.Canceled", f.Name, f.Status(), f.Err)
		}
	}
}
