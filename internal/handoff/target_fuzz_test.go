package handoff

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/transport"
)

// scriptConn delivers a fixed list of messages, then reports the link
// closed; it keeps what the target sends.
type scriptConn struct {
	mu   sync.Mutex
	in   []transport.Msg
	sent []transport.Msg
}

func (c *scriptConn) Send(m transport.Msg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, m)
	return nil
}

func (c *scriptConn) Recv(ctx context.Context) (transport.Msg, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.in) == 0 {
		return nil, io.EOF
	}
	m := c.in[0]
	c.in = c.in[1:]
	return m, nil
}

func (c *scriptConn) Close() error { return nil }

// okActions records the process work, which always succeeds.
type okActions struct {
	calls []string
}

func (a *okActions) Prepare(context.Context, *transport.Hello) error {
	a.calls = append(a.calls, "Prepare")
	return nil
}
func (a *okActions) Layout(context.Context, *transport.Layout) error {
	a.calls = append(a.calls, "Layout")
	return nil
}
func (a *okActions) RoundDone(context.Context, *transport.RoundDone) error {
	a.calls = append(a.calls, "RoundDone")
	return nil
}
func (a *okActions) Restore(context.Context, *transport.State) error {
	a.calls = append(a.calls, "Restore")
	return nil
}
func (a *okActions) Resume() error  { a.calls = append(a.calls, "Resume"); return nil }
func (a *okActions) Discard() error { a.calls = append(a.calls, "Discard"); return nil }

// FuzzTargetHandoff drives the target's state machine with any sequence
// of messages (each byte picks one): it must never resume without a
// commit that came after the state, never both resume and discard, and
// always discard what it prepared when it does not resume.
func FuzzTargetHandoff(f *testing.F) {
	f.Add([]byte{0, 1, 2, 1, 2, 3, 4})    // the happy path
	f.Add([]byte{0, 1, 2, 3, 5})          // abort instead of commit
	f.Add([]byte{0, 4, 1, 2, 3})          // commit too early
	f.Add([]byte{1, 0, 2})                // no hello first
	f.Add([]byte{0, 1, 1, 2, 2, 3, 3, 4}) // duplicates
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 64 {
			script = script[:64]
		}
		const sess = "0123456789abcdef0123456789abcdef"
		var in []transport.Msg
		round := uint32(0)
		for _, b := range script {
			switch b % 8 {
			case 0:
				in = append(in, &transport.Hello{Version: Version, SessionID: sess, Role: transport.RoleSource, PID: 42})
			case 1:
				in = append(in, &transport.Layout{Round: round, Body: []byte(`{}`)})
			case 2:
				in = append(in, &transport.RoundDone{Round: round})
				round++
			case 3:
				in = append(in, &transport.State{Body: []byte(`{}`)})
			case 4:
				in = append(in, &transport.Commit{})
			case 5:
				in = append(in, &transport.Abort{Reason: "fuzz"})
			case 6:
				in = append(in, &transport.StatusQuery{SessionID: sess})
			case 7:
				in = append(in, &transport.RoundDone{Round: uint32(b)})
			}
		}
		conn := &scriptConn{in: in}
		act := &okActions{}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg := TargetConfig{SessionID: sess, HelloTimeout: time.Second, CommitTimeout: time.Second, Linger: time.Millisecond}
		RunTarget(ctx, cfg, act, conn, NewOutcomes(0, nil))
		resumed, discarded, prepared, restoredAt, commitSeen := false, false, false, -1, false
		for i, c := range act.calls {
			switch c {
			case "Resume":
				resumed = true
			case "Discard":
				discarded = true
			case "Prepare":
				prepared = true
			case "Restore":
				restoredAt = i
			}
		}
		for _, m := range in {
			if _, ok := m.(*transport.Commit); ok {
				commitSeen = true
			}
		}
		switch {
		case resumed && discarded:
			t.Fatalf("both resumed and discarded: %v", act.calls)
		case resumed && (!commitSeen || restoredAt < 0):
			t.Fatalf("resumed without a state and a commit: %v", act.calls)
		case prepared && !resumed && !discarded:
			t.Fatalf("prepared, then neither resumed nor discarded: %v", act.calls)
		}
	})
}
