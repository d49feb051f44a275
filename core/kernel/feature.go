package kernel

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// ErrNotSupported matches (with errors.Is) every error that says a kernel
// mechanism is missing or refused here, as opposed to a probe that could not
// run.
var ErrNotSupported = errors.New("not supported")

// ErrNotProbed is the Err of a Feature that Check did not try (syscall
// injection without an injector).
var ErrNotProbed = errors.New("not probed")

// UnsupportedFeatureError says that a kernel mechanism does not work here,
// and why. It matches ErrNotSupported and unwraps to the system error that
// showed it, if any (errors.Is(err, unix.EPERM)).
type UnsupportedFeatureError struct {
	Name   string // the feature, one of the Feature* names
	Reason string // what was tried and what the kernel did
	Err    error  // the underlying error, or nil
}

func (e *UnsupportedFeatureError) Error() string {
	return e.Name + ": not supported: " + e.Reason
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *UnsupportedFeatureError) Is(target error) bool { return target == ErrNotSupported }

func (e *UnsupportedFeatureError) Unwrap() error { return e.Err }

// unsupported builds an *UnsupportedFeatureError; err may be nil.
func unsupported(name, reason string, err error) error {
	if err != nil {
		reason += ": " + err.Error()
	}
	return &UnsupportedFeatureError{Name: name, Reason: reason, Err: err}
}

// Names of the features Check reports, in the order it reports them.
const (
	FeaturePtraceSeize = "ptrace seize"
	FeatureInjection   = "syscall injection"
	FeaturePidfdGetfd  = "pidfd_getfd"
	FeatureClone3      = "clone3 set_tid"
	FeatureMMMap       = "PR_SET_MM_MAP"
	FeatureProcessVM   = "process_vm_readv/writev"
	FeatureSoftDirty   = "soft-dirty"
	FeatureUffdWP      = "uffd-wp async + PAGEMAP_SCAN"
	FeatureTCPRepair   = "TCP repair"
	FeatureVDSO        = "vdso layout"
	FeatureTimeNS      = "time namespaces"
	FeatureXSAVE       = "XSAVE features"
	// FeatureCgroupFreezer: the cgroup v2 freezer, as a freeze uses it
	// (ProbeCgroupFreezer).
	FeatureCgroupFreezer = "cgroup v2 freezer"
)

// Feature is the outcome of one probe.
type Feature struct {
	Name string
	// OK is true when the mechanism was exercised and did what it should.
	OK bool
	// Detail says what was seen: for a working feature what it offers
	// (features bits, sizes), otherwise why it does not work.
	Detail string
	// Err is nil when OK; an error matching ErrNotSupported when the kernel
	// lacks or refuses the mechanism; ErrNotProbed when the probe was not
	// tried; any other error when the probe itself could not run, so that
	// whether the feature works is unknown.
	Err error
}

// Status is a one-word summary: "yes", "no", "not probed" or "unknown"
// (the probe could not run).
func (f Feature) Status() string {
	switch {
	case f.OK:
		return "yes"
	case errors.Is(f.Err, ErrNotProbed):
		return "not probed"
	case f.Err == nil || errors.Is(f.Err, ErrNotSupported):
		return "no"
	default:
		return "unknown"
	}
}

// ProbeFailed reports whether the probe could not run (Status "unknown").
func (f Feature) ProbeFailed() bool { return f.Status() == "unknown" }

// MarshalJSON writes Err as a string.
func (f Feature) MarshalJSON() ([]byte, error) {
	v := struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Status string `json:"status"`
		Detail string `json:"detail"`
		Error  string `json:"error,omitempty"`
	}{Name: f.Name, OK: f.OK, Status: f.Status(), Detail: f.Detail}
	if f.Err != nil {
		v.Error = f.Err.Error()
	}
	return json.Marshal(v)
}

// CheckOptions configure Check.
type CheckOptions struct {
	// Inject, if not nil, probes syscall injection (core/ptrace
	// ProbeInjection). It lives elsewhere so that this package does not
	// depend on the tracer. Nil reports the feature as not probed.
	Inject func() error
}

// probeTimeout bounds one probe; a probe that hangs (a helper that never
// answers) is killed and reported as failed.
const probeTimeout = 15 * time.Second

// A probe exercises one mechanism and returns what it saw. Its error
// matches ErrNotSupported when the mechanism does not work here.
type probe struct {
	name string
	run  func(ctx context.Context) (string, error)
}

// Check probes, for real, each kernel mechanism migrate relies on, and
// reports one Feature per mechanism in a fixed order. It starts and reaps
// short-lived helper processes (see Helper) and leaves nothing behind.
// It never reads the kernel configuration: a mechanism works when using it
// works.
func Check(ctx context.Context, opts CheckOptions) []Feature {
	inject := func(context.Context) (string, error) {
		if opts.Inject == nil {
			return "", ErrNotProbed
		}
		if err := opts.Inject(); err != nil {
			if errors.Is(err, ErrNotSupported) {
				return "", err
			}
			return "", unsupported(FeatureInjection, "injecting getpid into a child", err)
		}
		return "getpid injected into a seized child answered its pid", nil
	}
	probes := []probe{
		{FeaturePtraceSeize, ProbePtraceSeize},
		{FeatureInjection, inject},
		{FeaturePidfdGetfd, ProbePidfdGetfd},
		{FeatureClone3, ProbeClone3SetTID},
		{FeatureMMMap, ProbeMMMap},
		{FeatureProcessVM, ProbeProcessVM},
		{FeatureSoftDirty, ProbeSoftDirty},
		{FeatureUffdWP, ProbeUffdWP},
		{FeatureTCPRepair, ProbeTCPRepair},
		{FeatureVDSO, ProbeVDSO},
		{FeatureTimeNS, ProbeTimeNamespace},
		{FeatureXSAVE, ProbeXSAVE},
		{FeatureCgroupFreezer, ProbeCgroupFreezer},
	}
	out := make([]Feature, 0, len(probes))
	for _, p := range probes {
		out = append(out, runProbe(ctx, p))
	}
	return out
}

func runProbe(ctx context.Context, p probe) Feature {
	if err := ctx.Err(); err != nil {
		return Feature{Name: p.name, Detail: "probe not run: " + err.Error(), Err: err}
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	detail, err := p.run(pctx)
	f := Feature{Name: p.name, OK: err == nil, Detail: detail, Err: err}
	var uf *UnsupportedFeatureError
	switch {
	case err == nil:
	case errors.Is(err, ErrNotProbed):
		f.Detail = "not probed"
		if p.name == FeatureInjection {
			f.Detail = "not probed (no injector in this build)"
		}
	case errors.As(err, &uf):
		f.Detail = uf.Reason
	default:
		f.Detail = "probe failed: " + err.Error()
	}
	return f
}
