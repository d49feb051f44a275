package transport

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// maxFrame is the largest yamux data frame a stream writes. yamux sends a
// Write as one frame of up to the peer's window (StreamWindow, 16 MiB),
// and every frame, keepalive pings included, waits in one queue for the
// connection: keeping frames small keeps a ping from waiting behind many
// megabytes of page data, and so from timing out on a slow link.
const maxFrame = 256 << 10

// yamuxConfig is the one place yamux is configured; every default is set on
// purpose.
func yamuxConfig(s *settings, logger *slog.Logger) (*yamux.Config, error) {
	c := &yamux.Config{
		// Streams the peer opened and no one accepted yet. Each holds at
		// most yamux's initial window (256 KiB) until it is read; the
		// window grows to StreamWindow only as the reader consumes.
		AcceptBacklog: 64,
		// A silent peer is found within KeepAliveInterval +
		// KeepAliveTimeout: a ping is sent every interval and must be
		// answered within ConnectionWriteTimeout (yamux waits that long
		// for the pong), and any frame that cannot be written within it
		// kills the session too.
		EnableKeepAlive:        true,
		KeepAliveInterval:      s.KeepAliveInterval,
		ConnectionWriteTimeout: s.KeepAliveTimeout,
		// The default (256 KiB) caps a stream at 256 KiB per RTT.
		MaxStreamWindowSize: s.StreamWindow,
		// The peer acknowledges a new stream as soon as it reads its kind
		// byte, which it does at once; an unacknowledged stream means a
		// broken peer, and yamux then closes the session.
		StreamOpenTimeout: 30 * time.Second,
		// Off: after it fires, yamux resets the stream, and the peer's
		// Read then fails even on data it has received and not read yet;
		// a reader that is merely slow would lose data. A stream the peer
		// never closes is freed with its session, and sessions are short
		// (one migration).
		StreamCloseTimeout: 0,
		// Never yamux's default, stderr (hashicorp/yamux#24).
		Logger: yamuxLogger{logger},
	}
	if err := yamux.VerifyConfig(c); err != nil {
		return nil, fmt.Errorf("%w: yamux: %w", ErrConfig, err)
	}
	return c, nil
}

// yamuxLogger turns yamux's log lines into debug records: what matters to
// the caller (a dead peer, a timeout) it learns from the session's errors.
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any) { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) {
	y.log(fmt.Sprintf(format, v...))
}
func (y yamuxLogger) Println(v ...any) { y.log(fmt.Sprint(v...)) }

func (y yamuxLogger) log(msg string) {
	y.l.Log(context.Background(), slog.LevelDebug, strings.TrimSpace(msg), "component", "yamux")
}
