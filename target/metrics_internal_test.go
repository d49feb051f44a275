package target

import (
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/procmig/migrate/transport"
)

// TestHandshakeRefusedReasons: the reason of a refused connection comes
// from the error's type, as transport.Listener.Accept returns it.
func TestHandshakeRefusedReasons(t *testing.T) {
	m := NewMetrics()
	for _, c := range []struct {
		err  error
		want string
	}{
		{&transport.HandshakeError{Stage: "auth", Err: &transport.AuthError{Reason: transport.ReasonBadProof}}, "auth"},
		{&transport.HandshakeError{Stage: "tls", Err: transport.ErrEvicted}, "evicted"},
		{&transport.HandshakeError{Stage: "tls", Err: os.ErrDeadlineExceeded}, "timeout"},
		{&transport.HandshakeError{Stage: "auth", Err: transport.ErrHandshake}, "handshake"},
		{&transport.HandshakeError{Stage: "connect", Err: os.ErrClosed}, "other"},
	} {
		before := testutil.ToFloat64(m.handshakes.WithLabelValues(c.want))
		m.handshakeRefused(c.err)
		if got := testutil.ToFloat64(m.handshakes.WithLabelValues(c.want)) - before; got != 1 {
			t.Errorf("%v: %s moved by %v, want 1", c.err, c.want, got)
		}
	}
	if got := testutil.CollectAndCount(m.handshakes); got != 5 {
		t.Errorf("%d reasons, want 5", got)
	}
	// A nil *Metrics counts nothing, and does not panic.
	var none *Metrics
	none.handshakeRefused(transport.ErrEvicted)
	none.sessionStarted()
	none.sessionEnded()
	none.sessionRefused(time.Now(), ReasonBusy)
}
