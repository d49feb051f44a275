// Package transport connects a migration source to its target: dialing and
// listening, TLS 1.3 and mutual authentication, the yamux session, typed
// streams, and the control-message codec.
//
// transport knows nothing of processes or pages: it moves authenticated
// bytes and control messages, the frame and the message structs (the wire
// format, decoded strictly here). Which message may come when, and the
// opaque bodies, are the protocol's: internal/handoff. It must never import
// core, pagestream, internal/handoff, source or target, and only transport
// imports yamux (internal/deps checks both).
//
// # Connection
//
// Dial and Listen run, in order, each step under a deadline:
//
//  1. TCP connect (Config.HandshakeTimeout, and the caller's context).
//  2. TLS 1.3 (HandshakeTimeout), ALPN "github.com/procmig/migrate/1".
//  3. The authentication exchange (Config.AuthTimeout), below.
//  4. yamux over the TLS connection, configured in one place (yamux.go):
//     stream window Config.StreamWindow (16 MiB), keepalive pings every
//     Config.KeepAliveInterval (2 s) that must be answered within
//     Config.KeepAliveTimeout (5 s), which also bounds every write to the
//     connection; so a peer that goes silent is found within 7 s.
//
// A listener handshakes each connection on its own goroutine. A connection
// must send its first bytes (the TLS hello, which a real dialer sends at
// once) within Config.FirstByteTimeout (2 s). At most Config.MaxHandshakes
// (256: a goroutine, an fd and a few KiB each) are in progress; a new
// connection beyond that evicts the one that got least far (nothing
// received for 250 ms; part of the TLS hello; the whole hello; TLS done),
// the oldest of those (its Accept error wraps ErrEvicted). So silent or
// stalled connections, even from the real source's own address and
// however fast they come, cost at most MaxHandshakes goroutines and never
// keep out a dialer that completes its handshake: only peers that do as
// much work as it does compete with it. Refused connections are logged at
// most once a second, with a count of the rest.
//
// # Authentication
//
// The mode is chosen explicitly in Config, and both ends must choose the
// same:
//
//   - Shared secret (Config.Secret, from --secret-file): each end uses an
//     ephemeral self-signed certificate and does not verify the other's
//     (there is no PKI); instead each proves it holds the secret, bound to
//     this TLS session through the TLS exporter (RFC 8446 §7.5). A man in
//     the middle runs two TLS sessions with two exporter values, so it can
//     neither relay a proof nor make one.
//   - Certificates (Config.CertFile, KeyFile, CAFile): mutual TLS; the
//     listener requires and verifies a client certificate, the dialer
//     checks the listener's name (Config.ServerName, else the dialed
//     host). Both may be combined with a secret.
//   - Insecure (Config.Insecure): TLS without authentication, on request
//     only; a warning is logged and Session.Auth returns AuthNone.
//
// The proofs are
//
//	proof(role, transcript) = HMAC-SHA256(secret,
//	    "migrate auth v2" 0x00 role 0x00 EKM transcript)
//	EKM = TLS exporter, label "migrate auth", no context, 32 bytes
//
// where role is "dialer" or "listener", and the transcript is the whole
// hello and the first 12 bytes of the reply. The exchange (integers
// little-endian):
//
//	dialer → listener, hello, 28 bytes:
//	  off size
//	    0    8 magic "MIGRAUTH"
//	    8    1 version, 2
//	    9    1 mode: bit 0 shared secret, bit 1 certificates (0 insecure)
//	   10    2 reserved, 0
//	   12   16 session ID
//
//	listener → dialer, reply, 44 bytes:
//	    0    8 magic "MIGRAUTH"
//	    8    1 version, 2
//	    9    1 mode of the listener
//	   10    1 status: 0 ok, 1 bad version, 2 mode mismatch,
//	                   4 malformed hello
//	   11    1 reserved, 0
//	   12   32 proof("listener", hello reply[0:12]) if the status is ok
//	           and there is a secret, else zeros
//
//	dialer → listener, final, 33 bytes:
//	    0    1 status: 0 ok, 2 mode mismatch, 3 bad proof
//	    1   32 proof("dialer", hello reply[0:12]) if the status is ok and
//	           there is a secret, else zeros
//
//	listener → dialer, verdict, 1 byte: 0 ok, 3 bad proof
//
// The listener proves itself first, and the dialer sends its proof only
// to a listener whose proof it checked: a listener without the secret (an
// impostor at the address the dialer was given) learns nothing derived
// from the secret. The listener's proof goes to any dialer that completes
// TLS, and a proof can be attacked offline (guesses of the secret checked
// against it): that is why CheckSecret refuses secrets shorter than
// MinSecretLen or with less than MinSecretBits of estimated entropy, and
// why GenerateSecret (migrate serve --gen-secret) writes 32 random bytes.
// Proofs are compared with hmac.Equal. A failure is an *AuthError
// (errors.Is(err, ErrAuth)) on both ends, naming the reason. After the
// verdict, the connection carries yamux and nothing else.
//
// Whoever holds the secret (or a certificate of the CA) can make a
// listener build any process it describes: run any program as any user
// on the listener's host.
//
// # Streams
//
// The opening side (by convention the dialer) writes one byte on every new
// stream, its kind: 1 control (at most one per session), 2 pages (several
// in parallel), 3 bulk state. A stream of another kind, a second control
// stream, or one whose kind byte does not come within HandshakeTimeout is a
// protocol violation: the session is closed with ErrProtocol. Streams are
// written in yamux frames of at most 256 KiB, so that keepalive pings never
// wait long behind page data.
//
// When the session ends, Done is closed and Err says why (ErrPeerGone,
// ErrPeerTimeout, ErrProtocol or ErrSessionClosed); reads and writes on its
// streams then fail with that error, never io.EOF.
//
// # Control messages
//
// The control stream carries frames (integers little-endian; CRC is CRC32C,
// Castagnoli):
//
//	off  size field
//	  0     1 version, 1 (MsgVersion)
//	  1     1 flags, 0 (a reader rejects any bit)
//	  2     2 type (TypeHello ... TypeFilesReply)
//	  4     4 payload length n: at most MaxMsgPayload (16 MiB) for Layout
//	          and State, MaxSmallPayload (64 KiB) for the others
//	  8     4 CRC of bytes 0..7
//	 12     n payload: one JSON object, the message's fields
//	12+n    4 CRC of bytes 0..12+n-1
//
// The header CRC is checked before the length is trusted, the length
// against its type's cap before anything is allocated, and the payload is
// read into a buffer that grows only as bytes arrive, so a lying length
// costs at most 64 KiB. The payload is decoded strictly (no unknown fields,
// nothing after the object) and each message is validated (session IDs,
// roles, PIDs, name and text lengths). Every decoding error is a *MsgError
// with the offset in the frame and a sentinel (ErrMsgTruncated,
// ErrMsgTooLarge, ErrMsgChecksum, ErrMsgType, ...). Deadlines are the
// caller's, set on the stream.
package transport
