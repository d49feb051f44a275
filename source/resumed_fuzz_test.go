package source

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzResumedBody feeds the source's decoder of the target's Resumed body
// (what the target measured) any bytes, as a hostile target would send:
// it must never panic, and keeps at most 64 steps. The handoff around it
// is fuzzed in internal/handoff (FuzzSourceHandoff).
func FuzzResumedBody(f *testing.F) {
	steps := make([]map[string]any, 65)
	for i := range steps {
		steps[i] = map[string]any{"name": "decode state", "ms": 0.4}
	}
	for _, n := range []int{1, 65} {
		b, _ := json.Marshal(map[string]any{"target_downtime_ms": 12.5, "target_steps": steps[:n]})
		f.Add(b)
	}
	f.Add([]byte(`{"target_downtime_ms":"x"}`))
	f.Add([]byte(`{"since_resumed_ms":3.5}`))
	f.Add([]byte(`{"since_resumed_ms":-1e300}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var a liveSource
		a.ready = time.Now().Add(-10 * time.Millisecond)
		a.Resumed(body)
		if len(a.targetSteps) > 64 {
			t.Fatalf("%d target steps kept, at most 64", len(a.targetSteps))
		}
		// The resume is dated after the target said ready, and not in
		// the future, whatever the target says.
		if !a.resumed.IsZero() && (a.resumed.Before(a.ready) || a.resumed.After(time.Now())) {
			t.Fatalf("resumed %v, ready %v, now %v", a.resumed, a.ready, time.Now())
		}
	})
}

// TestResumedSince: the source dates the resume by the target's time
// from it to its answer, taken only within the time since ready.
func TestResumedSince(t *testing.T) {
	for _, c := range []struct {
		since float64 // ms
		moved bool
	}{{3, true}, {0, false}, {-3, false}, {50, false}} {
		var a liveSource
		a.ready = time.Now().Add(-20 * time.Millisecond)
		body, _ := json.Marshal(map[string]any{"target_downtime_ms": 12.5, "since_resumed_ms": c.since})
		before := time.Now()
		a.Resumed(body)
		switch {
		case !c.moved && !a.resumed.IsZero():
			t.Errorf("since %v ms: resume dated %v before the answer; want it left to the answer", c.since, before.Sub(a.resumed))
		case c.moved && a.resumed.IsZero():
			t.Errorf("since %v ms: resume not dated", c.since)
		case c.moved:
			if ago := before.Sub(a.resumed); ago < time.Duration(c.since*float64(time.Millisecond))-time.Millisecond || a.resumed.After(time.Now()) {
				t.Errorf("since %v ms: resume dated %v before the answer", c.since, ago)
			}
		}
	}
}
