package target_test

// Tests of the target service's metrics: the reasons derived from typed
// errors, and a service run in-process whose sessions (a refused
// handshake, a refused hello, a PID that is taken here, a status question)
// move exactly the counters they should, and whose /healthz follows its
// life. A resumed migration is counted in e2e (TestLiveMetrics): it needs
// the service in a PID namespace of its own.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

func TestFailureReason(t *testing.T) {
	const sid = "0123456789abcdef0123456789abcdef"
	failed := func(phase string, err error) error {
		return &handoff.TargetError{Session: sid, Phase: phase, Outcome: transport.OutcomeAborted, Err: err}
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{failed(handoff.PhasePrepare, &target.PIDInUseError{PID: 7, Holder: "sleep"}), target.ReasonPIDInUse},
		{failed(handoff.PhaseRounds, &core.ImageError{File: "/usr/bin/x", Reason: "executable is gone",
			Err: &fs.PathError{Op: "stat", Path: "/usr/bin/x", Err: fs.ErrNotExist}}), target.ReasonFileMissing},
		{failed(handoff.PhaseRounds, &core.ImageError{File: "/usr/bin/x", Reason: "executable changed since the dump"}), target.ReasonBadImage},
		{failed(handoff.PhaseRestore, fmt.Errorf("state: %w", core.ErrInconsistent)), target.ReasonBadImage},
		{failed(handoff.PhaseRounds, &pagestream.FrameError{Offset: 40, Reason: "checksum"}), target.ReasonBadImage},
		{failed(handoff.PhaseRounds, &target.VDSOMismatchError{Reason: "sizes"}), target.ReasonHostMismatch},
		{failed(handoff.PhaseRestore, &target.HostLimitError{What: "fs.nr_open", Need: 1 << 20, Limit: 1024}), target.ReasonHostMismatch},
		{failed(handoff.PhaseRestore, &kernel.UnsupportedFeatureError{Name: kernel.FeaturePtraceSeize}), target.ReasonHostMismatch},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w: %w", handoff.ErrLinkLost, io.EOF)), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, fmt.Errorf("round 3: the page stream ended before its barrier: %w", io.EOF)), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, fmt.Errorf("page stream: %w", &pagestream.FrameError{Offset: 9, Err: io.ErrUnexpectedEOF})), target.ReasonPeerLost},
		{failed(handoff.PhaseReady, fmt.Errorf("%w (%v)", handoff.ErrAbortedByQuery, "x")), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, transport.ErrPeerTimeout), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, &handoff.PeerError{Abort: true, Text: "operator"}), target.ReasonPeerAborted},
		{failed(handoff.PhaseReady, fmt.Errorf("%w: no commit within 30s", handoff.ErrTimeout)), target.ReasonTimeout},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w: a second freeze", handoff.ErrPeerProtocol)), target.ReasonProtocol},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w: %w", handoff.ErrLinkLost, &transport.MsgError{Err: transport.ErrMsgChecksum})), target.ReasonProtocol},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w: %w", handoff.ErrLinkLost, &transport.MsgError{Err: transport.ErrMsgTruncated})), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w: %w", handoff.ErrLinkLost, &transport.MsgError{Err: net.ErrClosed})), target.ReasonPeerLost},
		{failed(handoff.PhaseRounds, &transport.MsgError{Err: transport.ErrMsgChecksum}), target.ReasonProtocol},
		{failed(handoff.PhaseRounds, fmt.Errorf("%w (%v)", context.Canceled, "x")), target.ReasonShutdown},
		{failed(handoff.PhaseResume, errors.New("ptrace detach: no such process")), target.ReasonOther},
		{nil, target.ReasonOther},
	} {
		if got := target.FailureReason(c.err); got != c.want {
			t.Errorf("FailureReason(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// scrape reads the metrics as a Prometheus server would: over h, in the
// text format, parsed.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// metric returns the value of the counter or gauge name{label=value},
// or for a histogram its count; with label "" the sum over every series.
func metric(t *testing.T, fams map[string]*dto.MetricFamily, name, label, value string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	var v float64
	found := false
	for _, m := range f.Metric {
		if label != "" {
			match := false
			for _, l := range m.Label {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	if !found {
		t.Fatalf("no metric %s{%s=%q}", name, label, value)
	}
	return v
}

func healthz(t *testing.T, h http.Handler) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	return rec.Code, strings.TrimSpace(rec.Body.String())
}

// waitMetric waits until the counter name{label=value} is want; a count
// past want fails at once.
func waitMetric(t *testing.T, h http.Handler, name, label, value string, want float64) {
	t.Helper()
	waitValue(t, h, name, label, value, want, true)
}

func waitValue(t *testing.T, h http.Handler, name, label, value string, want float64, counter bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := metric(t, scrape(t, h), name, label, value)
		if got == want {
			return
		}
		if (counter && got > want) || time.Now().After(deadline) {
			t.Fatalf("%s{%s=%q} = %v, want %v", name, label, value, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeMetrics(t *testing.T) {
	randomSecret := func() []byte {
		var b [32]byte
		rand.Read(b[:])
		return []byte(hex.EncodeToString(b[:]))
	}
	secret := randomSecret()
	m := target.NewMetrics()
	h := m.Handler()
	if code, body := healthz(t, h); code != http.StatusServiceUnavailable || body != "starting" {
		t.Errorf("healthz before the service listens: %d %q", code, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	served := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		served <- target.Serve(ctx, target.ServeOptions{Listen: "127.0.0.1:0", Transport: transport.Config{Secret: secret, Logger: log},
			Metrics: m, Logger: log, Ready: func(a net.Addr) { ready <- a }})
	}()
	var addr string
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-served:
		t.Fatalf("serve: %v", err)
	}
	if code, body := healthz(t, h); code != http.StatusOK || body != "ok" {
		t.Errorf("healthz while serving: %d %q", code, body)
	}

	// A wrong secret: a refused handshake, not a migration.
	if s, err := transport.Dial(ctx, addr, transport.Config{Secret: randomSecret()}); err == nil {
		s.Close()
		t.Fatal("dial with another secret succeeded")
	}
	waitMetric(t, h, "migrate_target_handshakes_refused_total", "reason", "auth", 1)

	// control opens a session and its control stream.
	control := func() (*transport.Session, *transport.Control) {
		t.Helper()
		s, err := transport.Dial(ctx, addr, transport.Config{Secret: secret})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		c, err := s.OpenStream(transport.KindControl)
		if err != nil {
			t.Fatal(err)
		}
		return s, transport.NewControl(c)
	}
	// hello sends a hello. The service may refuse it, answer and close
	// the session before the write returns here (yamux reports the
	// session gone then): the counts below say whether it arrived.
	hello := func(c *transport.Control, h *transport.Hello) {
		t.Helper()
		if err := c.Send(h); err != nil {
			t.Logf("sending the hello: %v", err)
		}
	}

	// A hello of another protocol version: refused.
	s, c := control()
	hello(c, &transport.Hello{Version: handoff.Version + 1, SessionID: s.ID(), Role: transport.RoleSource, PID: 12345})
	waitMetric(t, h, "migrate_target_migrations_total", "outcome", target.MetricRefused, 1)
	waitMetric(t, h, "migrate_target_restore_failures_total", "reason", target.ReasonRefused, 1)

	// A process whose PID is taken here (this test's): the service
	// refuses it before the source would freeze anything.
	s, c = control()
	failed := s.ID()
	hello(c, &transport.Hello{Version: handoff.Version, SessionID: s.ID(), Role: transport.RoleSource, PID: os.Getpid()})
	waitMetric(t, h, "migrate_target_migrations_total", "outcome", target.MetricFailed, 1)
	waitMetric(t, h, "migrate_target_restore_failures_total", "reason", target.ReasonPIDInUse, 1)

	// The source of that session asks what became of it; the sessions
	// before have ended.
	_, c = control()
	waitValue(t, h, "migrate_target_sessions_in_progress", "", "", 1, false)
	if err := c.Send(&transport.StatusQuery{SessionID: failed}); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	msg, err := c.Recv(rctx)
	rcancel()
	if r, ok := msg.(*transport.StatusReply); !ok || r.Outcome != transport.OutcomeAborted {
		t.Fatalf("status reply %v, %v", msg, err)
	}
	c.Close()
	waitMetric(t, h, "migrate_target_status_queries_total", "answer", transport.OutcomeAborted.String(), 1)

	// Nothing else moved: no migration resumed, none counted twice.
	fams := scrape(t, h)
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"migrate_target_migrations_total", "outcome", target.MetricResumed, 0},
		{"migrate_target_migrations_total", "outcome", target.MetricAborted, 0},
		{"migrate_target_downtime_seconds", "", "", 0},
		{"migrate_target_migration_duration_seconds", "outcome", target.MetricRefused, 1},
		{"migrate_target_migration_duration_seconds", "outcome", target.MetricFailed, 1},
		{"migrate_target_restore_failures_total", "reason", target.ReasonOther, 0},
		{"migrate_target_received_pages_total", "", "", 0},
		{"migrate_target_handshakes_refused_total", "reason", "handshake", 0},
		{"migrate_target_handshakes_refused_total", "reason", "evicted", 0},
		{"migrate_target_handshakes_refused_total", "", "", 1},
		// Each migration not resumed has exactly one reason.
		{"migrate_target_migrations_total", "", "", 2},
		{"migrate_target_restore_failures_total", "", "", 2},
		{"migrate_target_status_queries_total", "", "", 1},
	} {
		if got := metric(t, fams, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if code, body := healthz(t, h); code != http.StatusServiceUnavailable || body != "stopping" {
		t.Errorf("healthz after the service stopped: %d %q", code, body)
	}
	if got := metric(t, scrape(t, h), "migrate_target_sessions_in_progress", "", ""); got != 0 {
		t.Errorf("sessions in progress after the service stopped: %v", got)
	}
}

// testWriter sends the service's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// TestServeMetricsBusy: a session beyond MaxSessions is counted refused,
// for the reason busy, once.
func TestServeMetricsBusy(t *testing.T) {
	var b [32]byte
	rand.Read(b[:])
	secret := []byte(hex.EncodeToString(b[:]))
	m := target.NewMetrics()
	h := m.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- target.Serve(ctx, target.ServeOptions{Listen: "127.0.0.1:0", Transport: transport.Config{Secret: secret},
			Metrics: m, MaxSessions: 1, Ready: func(a net.Addr) { ready <- a }})
	}()
	defer func() {
		cancel()
		<-served
	}()
	var addr string
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-served:
		t.Fatalf("serve: %v", err)
	}
	// The one slot, held by a session that says nothing yet.
	first, err := transport.Dial(ctx, addr, transport.Config{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitValue(t, h, "migrate_target_sessions_in_progress", "", "", 1, false)
	second, err := transport.Dial(ctx, addr, transport.Config{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	waitMetric(t, h, "migrate_target_restore_failures_total", "reason", target.ReasonBusy, 1)
	fams := scrape(t, h)
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"migrate_target_migrations_total", "outcome", target.MetricRefused, 1},
		{"migrate_target_migrations_total", "", "", 1},
		{"migrate_target_restore_failures_total", "", "", 1},
		{"migrate_target_sessions_in_progress", "", "", 1},
	} {
		if got := metric(t, fams, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
}
