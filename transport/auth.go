package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
)

// The authentication exchange runs on the TLS connection right after the
// TLS handshake, before yamux; the package comment draws its layout.
const (
	authVersion   = 2
	helloSize     = 28
	replySize     = 44
	finalSize     = 33
	proofSize     = sha256.Size
	ekmLabel      = "migrate auth"
	proofLabel    = "migrate auth v2"
	roleDialer    = "dialer"
	roleListener  = "listener"
	replySigned   = 12 // reply bytes covered by the proofs: all but the proof
	statusOK      = 0
	statusVersion = 1
	statusMode    = 2
	statusProof   = 3
	statusBad     = 4
)

var authMagic = [8]byte{'M', 'I', 'G', 'R', 'A', 'U', 'T', 'H'}

// exporter returns the TLS exporter value of the connection: 32 bytes that
// both ends of one TLS session compute alike, and that differ between the
// two TLS sessions a man in the middle would have to run.
func exporter(c *tls.Conn) ([]byte, error) {
	cs := c.ConnectionState()
	return cs.ExportKeyingMaterial(ekmLabel, nil, 32)
}

// proof is HMAC-SHA256(secret, proofLabel 0 role 0 ekm transcript...).
func proof(secret []byte, role string, ekm []byte, transcript ...[]byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(proofLabel))
	m.Write([]byte{0})
	m.Write([]byte(role))
	m.Write([]byte{0})
	m.Write(ekm)
	for _, t := range transcript {
		m.Write(t)
	}
	return m.Sum(nil)
}

func handshakeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrHandshake}, args...)...)
}

// readAuth reads exactly len(b) bytes of the exchange; a peer that hangs up
// is an ErrHandshake, a TLS alert about certificates an *AuthError.
func readAuth(c io.Reader, b []byte, what string) error {
	if _, err := io.ReadFull(c, b); err != nil {
		if ae := certError(err); ae != nil {
			return ae
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return handshakeErr("peer closed the connection before sending its %s", what)
		}
		return fmt.Errorf("reading %s: %w", what, err)
	}
	return nil
}

func writeAuth(c io.Writer, b []byte, what string) error {
	if _, err := c.Write(b); err != nil {
		if ae := certError(err); ae != nil {
			return ae
		}
		return fmt.Errorf("writing %s: %w", what, err)
	}
	return nil
}

// dialerAuth runs the dialer's side of the exchange. The caller has set the
// connection's deadline.
func dialerAuth(c *tls.Conn, s *settings, id [16]byte) error {
	ekm, err := exporter(c)
	if err != nil {
		return err
	}
	return dialerExchange(c, s, id, ekm)
}

// dialerExchange is the dialer's side of the exchange over c, whose TLS
// exporter value is ekm. The dialer sends its proof only once the listener
// has proved it holds the secret: an impostor listener gets nothing it
// could attack offline.
func dialerExchange(c io.ReadWriter, s *settings, id [16]byte, ekm []byte) error {
	var hello [helloSize]byte
	copy(hello[0:8], authMagic[:])
	hello[8] = authVersion
	hello[9] = byte(s.mode)
	copy(hello[12:28], id[:])
	if err := writeAuth(c, hello[:], "hello"); err != nil {
		return err
	}

	var reply [replySize]byte
	if err := readAuth(c, reply[:], "reply"); err != nil {
		return err
	}
	peerMode, err := checkReply(&reply, s.mode)
	if err != nil {
		return err
	}
	var final [finalSize]byte
	refuse := func(status byte, err error) error {
		final[0] = status
		writeAuth(c, final[:], "final status")
		return err
	}
	if peerMode != s.mode {
		// A listener that accepts a mode it does not run is broken or
		// hostile; never go on.
		return refuse(statusMode, &AuthError{Reason: ReasonModeMismatch, Local: s.mode, Peer: peerMode})
	}
	if s.mode&AuthSecret != 0 {
		want := proof(s.Secret, roleListener, ekm, hello[:], reply[:replySigned])
		if !hmac.Equal(want, reply[12:12+proofSize]) {
			return refuse(statusProof, &AuthError{Reason: ReasonBadProof})
		}
		copy(final[1:], proof(s.Secret, roleDialer, ekm, hello[:], reply[:replySigned]))
	}
	if err := writeAuth(c, final[:], "final status"); err != nil {
		return err
	}
	var verdict [1]byte
	if err := readAuth(c, verdict[:], "verdict"); err != nil {
		return err
	}
	switch verdict[0] {
	case statusOK:
		return nil
	case statusProof:
		return &AuthError{Reason: ReasonRejected}
	}
	return handshakeErr("the listener sent unknown verdict %d", verdict[0])
}

// checkReply checks the listener's reply and returns the mode it announced.
func checkReply(reply *[replySize]byte, mode AuthMode) (AuthMode, error) {
	if [8]byte(reply[0:8]) != authMagic {
		return 0, handshakeErr("the listener is not a migrate peer (bad magic %q)", reply[0:8])
	}
	peerMode := AuthMode(reply[9])
	switch reply[10] {
	case statusOK:
	case statusVersion:
		return 0, handshakeErr("the listener speaks handshake version %d, we speak %d", reply[8], authVersion)
	case statusMode:
		return 0, &AuthError{Reason: ReasonModeMismatch, Local: mode, Peer: peerMode}
	case statusBad:
		return 0, handshakeErr("the listener found our hello malformed")
	default:
		return 0, handshakeErr("the listener sent unknown status %d", reply[10])
	}
	if reply[8] != authVersion || reply[11] != 0 {
		return 0, handshakeErr("malformed reply from the listener (version %d, reserved %d)", reply[8], reply[11])
	}
	return peerMode, nil
}

// checkHello checks the dialer's hello: nil, or the status to refuse it
// with and why.
func checkHello(hello *[helloSize]byte, mode AuthMode) (byte, error) {
	if [8]byte(hello[0:8]) != authMagic {
		return statusBad, handshakeErr("the dialer is not a migrate peer (bad magic %q)", hello[0:8])
	}
	if hello[8] != authVersion {
		return statusVersion, handshakeErr("the dialer speaks handshake version %d, we speak %d", hello[8], authVersion)
	}
	if hello[10] != 0 || hello[11] != 0 {
		return statusBad, handshakeErr("malformed hello from the dialer (reserved bytes %#x %#x)", hello[10], hello[11])
	}
	if peerMode := AuthMode(hello[9]); peerMode != mode {
		return statusMode, &AuthError{Reason: ReasonModeMismatch, Local: mode, Peer: peerMode}
	}
	return 0, nil
}

// listenerAuth runs the listener's side of the exchange and returns the
// session ID the dialer announced. The caller has set the connection's
// deadline.
func listenerAuth(c *tls.Conn, s *settings) (id string, err error) {
	ekm, err := exporter(c)
	if err != nil {
		return "", err
	}
	return listenerExchange(c, s, ekm)
}

// listenerExchange is the listener's side of the exchange over c, whose
// TLS exporter value is ekm.
func listenerExchange(c io.ReadWriter, s *settings, ekm []byte) (id string, err error) {
	var hello [helloSize]byte
	if err := readAuth(c, hello[:], "hello"); err != nil {
		return "", err
	}
	var reply [replySize]byte
	copy(reply[0:8], authMagic[:])
	reply[8] = authVersion
	reply[9] = byte(s.mode)
	if status, err := checkHello(&hello, s.mode); err != nil {
		reply[10] = status
		writeAuth(c, reply[:], "reply")
		return "", err
	}
	if s.mode&AuthSecret != 0 {
		copy(reply[12:], proof(s.Secret, roleListener, ekm, hello[:], reply[:replySigned]))
	}
	if err := writeAuth(c, reply[:], "reply"); err != nil {
		return "", err
	}
	var final [finalSize]byte
	if err := readAuth(c, final[:], "final status"); err != nil {
		return "", err
	}
	switch final[0] {
	case statusOK:
	case statusProof:
		return "", &AuthError{Reason: ReasonRejected}
	case statusMode:
		return "", &AuthError{Reason: ReasonModeMismatch, Local: s.mode, Peer: AuthMode(hello[9])}
	default:
		return "", handshakeErr("the dialer sent unknown final status %d", final[0])
	}
	if s.mode&AuthSecret != 0 {
		want := proof(s.Secret, roleDialer, ekm, hello[:], reply[:replySigned])
		if !hmac.Equal(want, final[1:1+proofSize]) {
			writeAuth(c, []byte{statusProof}, "verdict")
			return "", &AuthError{Reason: ReasonBadProof}
		}
	}
	if err := writeAuth(c, []byte{statusOK}, "verdict"); err != nil {
		return "", err
	}
	return hex.EncodeToString(hello[12:28]), nil
}

// certError returns an *AuthError if err is a TLS certificate failure,
// seen here (verification) or reported by the peer (an alert), else nil.
func certError(err error) *AuthError {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) || errors.Is(err, errNoClientCert) {
		return &AuthError{Reason: ReasonCertificate, Err: err}
	}
	var ae tls.AlertError
	if errors.As(err, &ae) && certAlert(uint8(ae)) {
		return &AuthError{Reason: ReasonCertificate, Err: err}
	}
	// An alert received from the peer is a *net.OpError with Op "remote
	// error" around crypto/tls's unexported alert type, a uint8.
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		if v := reflect.ValueOf(oe.Err); v.Kind() == reflect.Uint8 && certAlert(uint8(v.Uint())) {
			return &AuthError{Reason: ReasonCertificate, Err: err}
		}
	}
	return nil
}

// certAlert reports whether a TLS alert code is about certificates.
func certAlert(code uint8) bool {
	switch code {
	case 42, // bad_certificate
		43,  // unsupported_certificate
		44,  // certificate_revoked
		45,  // certificate_expired
		46,  // certificate_unknown
		48,  // unknown_ca
		116: // certificate_required
		return true
	}
	return false
}
