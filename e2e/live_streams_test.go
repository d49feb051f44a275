package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLiveStreams moves a process that keeps rewriting its memory with
// its pages spread over several page streams, through pre-copy rounds:
// a page sent in one round on one stream and again in a later round on
// another must end with the later copy (the target waits for every
// stream's barrier of a round before it writes a page of the next), so
// the migrated process finds every page as it last wrote it.
func TestLiveStreams(t *testing.T) {
	testutil.RequireRoot(t)
	for _, streams := range []int{1, 3} {
		t.Run(map[int]string{1: "one", 3: "three"}[streams], func(t *testing.T) {
			s := startServeWith(t, serveOptions{})
			w := startDirtyWork(t)
			pol := source.DefaultPolicy
			pol.TargetDowntime = 5 * time.Millisecond // rounds while it writes
			pol.MaxRounds = 4
			rep, err := source.Migrate(context.Background(), source.MigrateOptions{
				PID: w.PID, To: s.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
				Policy: pol, Streams: streams,
			})
			if err != nil {
				t.Fatalf("migrate: %v", err)
			}
			if rep.Outcome != "resumed" {
				t.Fatalf("report: %+v", rep)
			}
			if rep.Streams != streams {
				t.Errorf("report says %d page streams, want %d", rep.Streams, streams)
			}
			if len(rep.Rounds) < 3 {
				t.Errorf("%d rounds, want at least two of pre-copy and the final one", len(rep.Rounds))
			}
			t.Logf("%d streams: %d rounds, %d pages, %d bytes on the wire", rep.Streams, len(rep.Rounds), rep.Pages, rep.BytesWire)
			checkMigratedOnly(t, w, s)
		})
	}
}
