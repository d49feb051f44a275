package target

// Prometheus metrics of the target service. Metrics holds its collectors
// in a registry of its own (never the global one), and Serve observes into
// it when ServeOptions.Metrics is set; a nil *Metrics observes nothing.
// Every name below is documented in the README ("Metrics").

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/transport"
)

// Outcomes of a migration, the values of the outcome label.
const (
	// MetricResumed: the process runs here.
	MetricResumed = "resumed"
	// MetricFailed: this side could not restore the process (its PID is
	// taken, a file is missing, the image is bad, ...); the husk is gone
	// and the source resumes its original.
	MetricFailed = "failed"
	// MetricAborted: the source aborted, or its link was lost, it was too
	// slow, it broke the protocol, or the service stopped, before the
	// commit; the husk is gone and the source resumes its original.
	MetricAborted = "aborted"
	// MetricRefused: the session never became a migration: no or a bad
	// hello (another protocol version, a session ID that is not its own).
	MetricRefused = "refused"
	// MetricInDoubt: the commit came but the resume failed and the husk
	// could not be killed: the process is in an unknown state here and its
	// original stays frozen on the source until an operator settles it.
	MetricInDoubt = "in_doubt"
)

// Reasons of a session that did not end resumed, the values of the reason
// label of migrate_target_restore_failures_total. They are derived from
// the error's type (errors.As, errors.Is), never from its text.
const (
	ReasonPIDInUse     = "pid_in_use"    // *PIDInUseError
	ReasonFileMissing  = "file_missing"  // a file the process needs is not here (fs.ErrNotExist)
	ReasonBadImage     = "bad_image"     // *core.ImageError, a core image sentinel, a *pagestream.FrameError
	ReasonHostMismatch = "host_mismatch" // *VDSOMismatchError, *HostLimitError, kernel.ErrNotSupported
	ReasonPeerLost     = "peer_lost"     // ErrLinkLost, the transport's ErrPeerGone/ErrPeerTimeout, a status query that decided the session
	ReasonPeerAborted  = "peer_aborted"  // *PeerError: the source sent Abort or Error
	ReasonTimeout      = "timeout"       // ErrTimeout: the source did not send in time
	ReasonProtocol     = "protocol"      // ErrPeerProtocol, transport.ErrProtocol, a control message that does not decode
	ReasonRefused      = "refused"       // the hello was refused or never came
	ReasonShutdown     = "shutdown"      // the service stopped (its context ended)
	ReasonBusy         = "busy"          // ServeOptions.MaxSessions sessions were in progress
	ReasonOther        = "other"
)

// Health states of the service, as /healthz reports them.
const (
	healthStarting int32 = iota
	healthServing
	healthStopping
)

// Metrics are the target service's Prometheus metrics and its health
// state. Create them with NewMetrics; the methods of a nil *Metrics do
// nothing. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	migrations *prometheus.CounterVec // outcome
	failures   *prometheus.CounterVec // reason
	downtime   prometheus.Histogram
	duration   *prometheus.HistogramVec // outcome
	bytes      *prometheus.CounterVec   // kind: raw, wire
	pages      prometheus.Counter
	inProgress prometheus.Gauge
	handshakes *prometheus.CounterVec // reason
	queries    *prometheus.CounterVec // answer

	health atomic.Int32
}

// NewMetrics returns the service's metrics in a new registry, with the Go
// runtime's and the process's collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migrate_target_migrations_total",
			Help: "Incoming migrations that ended, by outcome: resumed, failed (this side could not restore), aborted (by the source, its link, a timeout or the service stopping), refused (no or a bad hello, or the service busy), in_doubt (resume failed after the commit and the husk could not be killed).",
		}, []string{"outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migrate_target_restore_failures_total",
			Help: "Incoming migrations that did not end resumed, by reason: pid_in_use, file_missing, bad_image, host_mismatch, peer_lost, peer_aborted, timeout, protocol, refused, shutdown, busy, other.",
		}, []string{"reason"}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "migrate_target_downtime_seconds",
			Help:    "The target's part of the downtime of each resumed migration: from the final state's arrival (the source froze just before) to the process resumed.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "migrate_target_migration_duration_seconds",
			Help:    "Time of each incoming migration, by outcome: from the session's arrival (its handshake done) to the process resumed, or to the session's end.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 13), // 0.1 s to 6.8 min
		}, []string{"outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migrate_target_received_bytes_total",
			Help: "Memory received by page streams: kind raw counts the pages' bytes (pages x page size), kind wire the bytes of the streams as they came (compressed, framed).",
		}, []string{"kind"}),
		pages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "migrate_target_received_pages_total",
			Help: "Pages received by page streams.",
		}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "migrate_target_sessions_in_progress",
			Help: "Transport sessions being served: migrations and status questions.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migrate_target_handshakes_refused_total",
			Help: "Connections that did not become sessions, by reason: auth (authentication failed), timeout, handshake (not a migrate peer, another handshake version), evicted (cut to make room for newer connections), other. Under a flood, refusals beyond the listener's queue of 16 are not counted (the listener's log has them).",
		}, []string{"reason"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "migrate_target_status_queries_total",
			Help: "Status questions answered (a source that lost its link asks what became of its session), by answer: unknown, committed, resumed, aborted.",
		}, []string{"answer"}),
	}
	m.reg.MustRegister(m.migrations, m.failures, m.downtime, m.duration, m.bytes, m.pages, m.inProgress, m.handshakes, m.queries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every label value from the start, at 0: a rate over a series that
	// appears only with its first event misses that event.
	for _, o := range []string{MetricResumed, MetricFailed, MetricAborted, MetricRefused, MetricInDoubt} {
		m.migrations.WithLabelValues(o)
		m.duration.WithLabelValues(o)
	}
	for _, r := range []string{ReasonPIDInUse, ReasonFileMissing, ReasonBadImage, ReasonHostMismatch, ReasonPeerLost,
		ReasonPeerAborted, ReasonTimeout, ReasonProtocol, ReasonRefused, ReasonShutdown, ReasonBusy, ReasonOther} {
		m.failures.WithLabelValues(r)
	}
	for _, r := range []string{"auth", "timeout", "handshake", "evicted", "other"} {
		m.handshakes.WithLabelValues(r)
	}
	for _, o := range []transport.Outcome{transport.OutcomeUnknown, transport.OutcomeCommitted, transport.OutcomeResumed, transport.OutcomeAborted} {
		m.queries.WithLabelValues(o.String())
	}
	m.bytes.WithLabelValues("raw")
	m.bytes.WithLabelValues("wire")
	return m
}

// Registry is the registry the metrics are in (to add collectors, or to
// gather them in a test).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics on /metrics and the service's health on
// /healthz: 200 "ok" while the service accepts migrations, 503 before it
// listens ("starting") and from the moment it begins to stop ("stopping").
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		switch m.health.Load() {
		case healthServing:
			io.WriteString(w, "ok\n")
		case healthStarting:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "starting\n")
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "stopping\n")
		}
	})
	return mux
}

// serving marks the service as accepting migrations, until ctx ends.
func (m *Metrics) serving(ctx context.Context) (stop func()) {
	if m == nil {
		return func() {}
	}
	m.health.Store(healthServing)
	after := context.AfterFunc(ctx, func() { m.health.Store(healthStopping) })
	return func() {
		after()
		m.health.Store(healthStopping)
	}
}

func (m *Metrics) sessionStarted() {
	if m != nil {
		m.inProgress.Inc()
	}
}

func (m *Metrics) sessionEnded() {
	if m != nil {
		m.inProgress.Dec()
	}
}

// handshakeRefused counts a connection that failed its handshake.
func (m *Metrics) handshakeRefused(err error) {
	if m == nil {
		return
	}
	reason := "other"
	var he *transport.HandshakeError
	switch {
	case errors.Is(err, transport.ErrAuth):
		reason = "auth"
	case errors.Is(err, transport.ErrEvicted):
		reason = "evicted"
	case errors.As(err, &he) && he.Timeout():
		reason = "timeout"
	case errors.Is(err, transport.ErrHandshake):
		reason = "handshake"
	}
	m.handshakes.WithLabelValues(reason).Inc()
}

// sessionRefused counts a session that ended before its handoff began.
func (m *Metrics) sessionRefused(start time.Time, reason string) {
	if m == nil {
		return
	}
	m.migrations.WithLabelValues(MetricRefused).Inc()
	m.failures.WithLabelValues(reason).Inc()
	m.duration.WithLabelValues(MetricRefused).Observe(time.Since(start).Seconds())
}

// sessionDone counts a session whose handoff ran: a status question, or a
// migration that ended as res and err say (handoff.RunTarget's results). t is the
// session's process work, for its times and its page stream.
func (m *Metrics) sessionDone(start time.Time, t *liveTarget, res handoff.TargetResult, err error) {
	if m == nil {
		return
	}
	if res.Query {
		m.queries.WithLabelValues(res.Outcome.String()).Inc()
		return
	}
	if res.Files {
		return // a question before a migration, not one
	}
	outcome, reason := migrationOutcome(res, err)
	m.migrations.WithLabelValues(outcome).Inc()
	end := time.Now()
	if reason != "" {
		m.failures.WithLabelValues(reason).Inc()
	} else if !t.resumedAt.IsZero() {
		end = t.resumedAt
		m.downtime.Observe(t.resumedAt.Sub(t.stateAt).Seconds())
	}
	m.duration.WithLabelValues(outcome).Observe(end.Sub(start).Seconds())
	if st, ok := t.received(); ok {
		m.bytes.WithLabelValues("raw").Add(float64(st.BytesRaw))
		m.bytes.WithLabelValues("wire").Add(float64(st.BytesWire))
		m.pages.Add(float64(st.Pages))
	}
}

// migrationOutcome derives the outcome label of a migration from handoff.RunTarget's
// results, and for one that did not end resumed the reason label.
func migrationOutcome(res handoff.TargetResult, err error) (outcome, reason string) {
	if err == nil && res.Outcome == transport.OutcomeResumed {
		return MetricResumed, ""
	}
	var he *handoff.TargetError
	if errors.As(err, &he) && he.Phase == handoff.PhaseHello && res.Outcome == transport.OutcomeUnknown {
		return MetricRefused, ReasonRefused
	}
	reason = FailureReason(err)
	switch {
	case res.Outcome == transport.OutcomeCommitted:
		return MetricInDoubt, reason
	case res.Outcome == transport.OutcomeResumed:
		// Resumed, yet an error: not a path RunTarget takes; count it as
		// resumed so that no running process goes uncounted.
		return MetricResumed, ""
	}
	switch reason {
	case ReasonPeerLost, ReasonPeerAborted, ReasonTimeout, ReasonProtocol, ReasonShutdown:
		return MetricAborted, reason
	}
	return MetricFailed, reason
}

// FailureReason sorts the error of a migration that did not end resumed
// into one of the Reason* values, by its type.
func FailureReason(err error) string {
	var (
		pidInUse *PIDInUseError
		vdso     *VDSOMismatchError
		limit    *HostLimitError
		imgErr   *core.ImageError
		frameErr *pagestream.FrameError
		peerErr  *handoff.PeerError
	)
	switch {
	case err == nil:
		return ReasonOther
	case errors.As(err, &pidInUse):
		return ReasonPIDInUse
	// A control message that came whole but does not decode, before the
	// lost link that ErrLinkLost may say it is.
	case badMessage(err):
		return ReasonProtocol
	// Before the image errors: a lost link shows as a truncated frame.
	case errors.Is(err, handoff.ErrAbortedByQuery), errors.Is(err, handoff.ErrLinkLost),
		errors.Is(err, transport.ErrPeerGone), errors.Is(err, transport.ErrPeerTimeout),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ReasonPeerLost
	case errors.As(err, &peerErr):
		return ReasonPeerAborted
	case errors.Is(err, handoff.ErrTimeout):
		return ReasonTimeout
	case errors.Is(err, fs.ErrNotExist):
		return ReasonFileMissing
	case errors.As(err, &vdso), errors.As(err, &limit), errors.Is(err, kernel.ErrNotSupported):
		return ReasonHostMismatch
	case errors.As(err, &imgErr), errors.As(err, &frameErr),
		errors.Is(err, core.ErrNotImage), errors.Is(err, core.ErrBadVersion), errors.Is(err, core.ErrWrongArch),
		errors.Is(err, core.ErrInconsistent), errors.Is(err, core.ErrNotRegular), errors.Is(err, core.ErrBlobMismatch):
		return ReasonBadImage
	case errors.Is(err, handoff.ErrPeerProtocol), errors.Is(err, transport.ErrProtocol):
		return ReasonProtocol
	case errors.Is(err, context.Canceled):
		return ReasonShutdown
	}
	return ReasonOther
}

// badMessage reports whether err holds a control message that arrived but
// does not decode (a truncated one is a lost link).
func badMessage(err error) bool {
	var me *transport.MsgError
	if !errors.As(err, &me) {
		return false
	}
	for _, s := range []error{transport.ErrMsgVersion, transport.ErrMsgFlags, transport.ErrMsgHeaderCRC, transport.ErrMsgChecksum,
		transport.ErrMsgTooLarge, transport.ErrMsgType, transport.ErrMsgPayload, transport.ErrMsgInvalid} {
		if errors.Is(me.Err, s) {
			return true
		}
	}
	return false
}
