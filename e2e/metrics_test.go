package e2e

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLiveMetrics moves a running counter into a `migrate serve --metrics`
// and scrapes the service as Prometheus would: the migration is counted
// once as resumed, with one downtime (the target's own measure, as it
// reported it to the source) and one duration, the pages the source sent,
// no failure; /healthz says ok.
func TestLiveMetrics(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := l.Addr().String()
	l.Close()
	srv := startServeWith(t, serveOptions{Metrics: maddr})
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + maddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		code, body := get("/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v\n%s", err, body)
		}
		return fams
	}
	// value is the counter or gauge name{label=value}, or a histogram's
	// sample count and sum; the sum of every series with label "".
	value := func(fams map[string]*dto.MetricFamily, name, label, value string) (v, sum float64) {
		t.Helper()
		f := fams[name]
		if f == nil {
			t.Fatalf("no metric %s", name)
		}
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
				sum += m.Histogram.GetSampleSum()
			}
		}
		if !found {
			t.Fatalf("no metric %s{%s=%q}", name, label, value)
		}
		return v, sum
	}
	if code, body := get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz while serving: %d %q", code, body)
	}
	before := scrape()
	if n, _ := value(before, "migrate_target_migrations_total", "", ""); n != 0 {
		t.Fatalf("%v migrations counted before any", n)
	}

	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "16", "-b", "4")
	p.WaitLine(t, long, 0, "ready")
	p.WaitTick(t, short, 2)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: srv.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	p.WaitExit(t, short)

	// The service counts the session once it ends (the source has
	// closed it), and it is no longer in progress.
	var fams map[string]*dto.MetricFamily
	testutil.WaitFor(t, short, "the migration counted and its session ended", func() bool {
		fams = scrape()
		n, _ := value(fams, "migrate_target_migrations_total", "", "")
		open, _ := value(fams, "migrate_target_sessions_in_progress", "", "")
		return n >= 1 && open == 0
	})
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"migrate_target_migrations_total", "outcome", "resumed", 1},
		{"migrate_target_migrations_total", "", "", 1},
		{"migrate_target_restore_failures_total", "", "", 0},
		{"migrate_target_downtime_seconds", "", "", 1},
		{"migrate_target_migration_duration_seconds", "outcome", "resumed", 1},
		{"migrate_target_migration_duration_seconds", "", "", 1},
		{"migrate_target_received_pages_total", "", "", float64(rep.Pages)},
		{"migrate_target_received_bytes_total", "kind", "raw", float64(rep.BytesRaw)},
		{"migrate_target_handshakes_refused_total", "", "", 0},
		{"migrate_target_status_queries_total", "", "", 0},
		{"migrate_target_sessions_in_progress", "", "", 0},
	} {
		if got, _ := value(fams, c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	// The downtime observed is the one the target reported to the source
	// (rounded there to the microsecond).
	if _, sum := value(fams, "migrate_target_downtime_seconds", "", ""); math.Abs(sum*1000-rep.TargetDowntimeMS) > 0.01 {
		t.Errorf("downtime observed %.3f ms, the target reported %.3f ms", sum*1000, rep.TargetDowntimeMS)
	}
	// The duration runs from the session's arrival to the resume: more
	// than the downtime, less than the source's whole migration.
	if _, sum := value(fams, "migrate_target_migration_duration_seconds", "", ""); sum*1000 < rep.TargetDowntimeMS || sum*1000 > rep.TotalMS {
		t.Errorf("duration observed %.1f ms, want between the downtime %.1f ms and the source's total %.1f ms", sum*1000, rep.TargetDowntimeMS, rep.TotalMS)
	}
	if wire, _ := value(fams, "migrate_target_received_bytes_total", "kind", "wire"); wire == 0 || wire < float64(rep.BytesWire) {
		t.Errorf("wire bytes received %v, the source sent %d", wire, rep.BytesWire)
	}
	t.Logf("migrated %d pages (%d bytes on the wire), downtime %.1f ms, total %.1f ms", rep.Pages, rep.BytesWire, rep.TargetDowntimeMS, rep.TotalMS)
	if code, body := get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz after the migration: %d %q", code, body)
	}
}
