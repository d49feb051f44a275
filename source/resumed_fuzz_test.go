package source

import (
	"encoding/json"
	"testing"
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
	f.Fuzz(func(t *testing.T, body []byte) {
		var a liveSource
		a.Resumed(body)
		if len(a.targetSteps) > 64 {
			t.Fatalf("%d target steps kept, at most 64", len(a.targetSteps))
		}
	})
}
