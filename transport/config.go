package transport

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"os"
	"time"
)

// Defaults of the Config fields left zero.
const (
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultAuthTimeout       = 10 * time.Second
	DefaultKeepAliveInterval = 2 * time.Second
	DefaultKeepAliveTimeout  = 5 * time.Second
	DefaultStreamWindow      = 16 << 20
	DefaultMaxHandshakes     = 256
	DefaultFirstByteTimeout  = 2 * time.Second

	// MinSecretLen is the shortest shared secret accepted, in bytes (of
	// the file, white space trimmed). See CheckSecret for the rest.
	MinSecretLen = 32
	// MinSecretBits is the least entropy CheckSecret accepts, as it
	// estimates it.
	MinSecretBits = 128
)

// AuthMode is how the two ends of a session authenticate each other. It is
// a set of bits; AuthNone (Insecure) is the empty set.
type AuthMode uint8

const (
	// AuthNone: no authentication (Config.Insecure). The connection is
	// still TLS-encrypted, but anyone can be at the other end.
	AuthNone AuthMode = 0
	// AuthSecret: each end proves it knows the shared secret, bound to the
	// TLS session.
	AuthSecret AuthMode = 1 << 0
	// AuthCert: mutual TLS with certificates signed by a common CA.
	AuthCert AuthMode = 1 << 1

	authKnown = AuthSecret | AuthCert
)

func (m AuthMode) String() string {
	switch m {
	case AuthNone:
		return "none (insecure)"
	case AuthSecret:
		return "shared secret"
	case AuthCert:
		return "certificates"
	case AuthSecret | AuthCert:
		return "certificates and shared secret"
	}
	return fmt.Sprintf("mode(%#x)", uint8(m))
}

// Config configures both Dial and Listen; a few fields apply to one side
// only, as their comments say. The authentication mode must be chosen
// explicitly: Secret, the three certificate files, or both, or Insecure.
// The two ends must choose the same mode.
type Config struct {
	// Secret is the shared secret (LoadSecret reads --secret-file). Both
	// ends must hold the same one, and it must pass CheckSecret.
	Secret []byte

	// CertFile, KeyFile and CAFile (PEM) select mutual TLS: this end's
	// certificate and key, and the CA that must have signed the peer's
	// certificate. All three or none.
	CertFile, KeyFile, CAFile string

	// ServerName (Dial with certificates) is the name the listener's
	// certificate must carry. Empty: the host part of the dialed address.
	ServerName string

	// Insecure runs without authentication. It must be set on both ends,
	// and cannot be combined with Secret or certificates. Sessions say so
	// (Session.Auth returns AuthNone) and a warning is logged.
	Insecure bool

	// SessionID (Dial only) is the session ID to announce: 32 lower-case
	// hex digits. Empty: a random one.
	SessionID string

	// Logger receives the package's log records (never stdout or stderr).
	// Nil: discard.
	Logger *slog.Logger

	// HandshakeTimeout bounds the TCP connect and the TLS handshake.
	HandshakeTimeout time.Duration
	// AuthTimeout bounds the authentication exchange after TLS.
	AuthTimeout time.Duration
	// KeepAliveInterval is the time between keepalive pings. A peer that
	// goes silent is detected within KeepAliveInterval+KeepAliveTimeout.
	KeepAliveInterval time.Duration
	// KeepAliveTimeout is how long a ping may go unanswered, and how long a
	// frame may wait to be written to the connection, before the session
	// is declared dead (yamux's ConnectionWriteTimeout).
	KeepAliveTimeout time.Duration
	// StreamWindow is the largest receive window of a stream, in bytes; a
	// stream carries at most StreamWindow/RTT bytes per second, and a
	// reader that falls behind holds at most this much in memory per
	// stream.
	StreamWindow uint32
	// MaxHandshakes (Listen only) caps the connections being handshaken at
	// once (a goroutine, an fd and a few KiB each). A connection beyond it
	// evicts the pending one that got least far, the oldest of those (see
	// Listener).
	MaxHandshakes int
	// FirstByteTimeout (Listen only) bounds the wait for a connection's
	// first bytes (its TLS hello, which a real dialer sends at once).
	FirstByteTimeout time.Duration
}

// LoadSecret reads a shared secret from a file. Leading and trailing white
// space is dropped. The file must not be readable or writable by group or
// others, and the secret must be at least MinSecretLen bytes long.
func LoadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: secret file: %w", ErrConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: secret file: %w", ErrConfig, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: secret file %s is not a regular file", ErrConfig, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: secret file %s has mode %#o: it must not be accessible by group or others (chmod 600)", ErrConfig, path, perm)
	}
	const maxSecretFile = 64 << 10
	buf, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("%w: secret file: %w", ErrConfig, err)
	}
	n := len(buf)
	if n > maxSecretFile {
		return nil, fmt.Errorf("%w: secret file %s is larger than %d bytes", ErrConfig, path, maxSecretFile)
	}
	secret := bytes.TrimSpace(buf[:n])
	if err := CheckSecret(secret); err != nil {
		return nil, fmt.Errorf("%w (in %s; migrate serve --gen-secret FILE writes a good one)", err, path)
	}
	return bytes.Clone(secret), nil
}

// ErrWeakSecret: the shared secret is too short or too regular to resist
// an offline guess (see CheckSecret). It comes wrapped with ErrConfig.
var ErrWeakSecret = errors.New("shared secret too weak")

// CheckSecret refuses a secret that an attacker holding one proof (which
// the listener sends to any dialer, see the package comment) could guess
// offline: shorter than MinSecretLen bytes, a repetition of a shorter
// string ("abcabc...", one repeated byte), or with less than MinSecretBits
// of entropy as estimated from its bytes: its length times the Shannon
// entropy per byte of the bytes' frequencies, or of the differences
// between consecutive bytes if lower (which catches "abcdef..."). The
// estimate is low for short secrets by design: 32 random bytes, 44
// base64 characters or 64 hex digits (what GenerateSecret writes) pass
// with a wide margin; 32 hex digits do not. It knows nothing of words: a
// long passphrase may pass it and still be guessable. Use GenerateSecret.
func CheckSecret(b []byte) error {
	if len(b) < MinSecretLen {
		return fmt.Errorf("%w: %w: %d bytes, want at least %d random bytes", ErrConfig, ErrWeakSecret, len(b), MinSecretLen)
	}
	if p := period(b); p < len(b) {
		return fmt.Errorf("%w: %w: a string of %d bytes repeated", ErrConfig, ErrWeakSecret, p)
	}
	deltas := make([]byte, len(b)-1)
	for i := range deltas {
		deltas[i] = b[i+1] - b[i]
	}
	h := min(entropy(b), entropy(deltas))
	if bits := h * float64(len(b)); bits < MinSecretBits {
		return fmt.Errorf("%w: %w: about %.0f bits of entropy in %d bytes, want at least %d", ErrConfig, ErrWeakSecret, bits, len(b), MinSecretBits)
	}
	return nil
}

// period returns the length of the shortest string whose repetition, two
// copies at least (the last possibly cut short), makes b; else len(b).
func period(b []byte) int {
	for p := 1; p <= len(b)/2; p++ {
		if bytes.Equal(b[p:], b[:len(b)-p]) {
			return p
		}
	}
	return len(b)
}

// entropy is the Shannon entropy of b's byte frequencies, in bits per byte.
func entropy(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var n [256]int
	for _, c := range b {
		n[c]++
	}
	h := 0.0
	for _, k := range n {
		if k > 0 {
			p := float64(k) / float64(len(b))
			h -= p * math.Log2(p)
		}
	}
	return h
}

// GenerateSecret writes a new shared secret to path: 32 random bytes as 64
// hex digits and a newline, in a new file of mode 0600. An existing file
// is never overwritten.
func GenerateSecret(path string) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("transport: random secret: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: secret file: %w", ErrConfig, err)
	}
	// The mode whatever the umask.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("%w: secret file: %w", ErrConfig, err)
	}
	_, err = f.Write(append(hex.AppendEncode(nil, b[:]), '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("transport: writing the secret file: %w", err)
	}
	return nil
}

// NewSessionID returns a random session ID: 128 bits, 32 hex digits.
func NewSessionID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidSessionID reports whether id is a session ID: 32 lower-case hex
// digits.
func ValidSessionID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// settings is a validated Config with defaults applied and files loaded.
type settings struct {
	Config
	mode   AuthMode
	logger *slog.Logger
	cert   tls.Certificate // ours: from CertFile/KeyFile, or ephemeral
	roots  *x509.CertPool  // CAFile, for AuthCert
}

func (c Config) settings() (*settings, error) {
	s := &settings{Config: c}
	if s.Logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	} else {
		s.logger = s.Logger
	}
	if s.HandshakeTimeout <= 0 {
		s.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if s.AuthTimeout <= 0 {
		s.AuthTimeout = DefaultAuthTimeout
	}
	if s.KeepAliveInterval <= 0 {
		s.KeepAliveInterval = DefaultKeepAliveInterval
	}
	if s.KeepAliveTimeout <= 0 {
		s.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	if s.StreamWindow == 0 {
		s.StreamWindow = DefaultStreamWindow
	}
	if s.MaxHandshakes <= 0 {
		s.MaxHandshakes = DefaultMaxHandshakes
	}
	if s.FirstByteTimeout <= 0 {
		s.FirstByteTimeout = min(DefaultFirstByteTimeout, s.HandshakeTimeout)
	}
	if s.SessionID != "" && !ValidSessionID(s.SessionID) {
		return nil, fmt.Errorf("%w: session ID %q is not 32 lower-case hex digits", ErrConfig, s.SessionID)
	}

	files := 0
	for _, f := range []string{s.CertFile, s.KeyFile, s.CAFile} {
		if f != "" {
			files++
		}
	}
	if files != 0 && files != 3 {
		return nil, fmt.Errorf("%w: mutual TLS needs a certificate, its key and a CA file, all three", ErrConfig)
	}
	if s.Secret != nil {
		if err := CheckSecret(s.Secret); err != nil {
			return nil, err
		}
		s.mode |= AuthSecret
	}
	if files == 3 {
		s.mode |= AuthCert
	}
	switch {
	case s.Insecure && s.mode != AuthNone:
		return nil, fmt.Errorf("%w: Insecure cannot be combined with a secret or certificates", ErrConfig)
	case !s.Insecure && s.mode == AuthNone:
		return nil, fmt.Errorf("%w: no authentication configured: give a shared secret or certificates, or ask for Insecure explicitly", ErrConfig)
	}

	if s.mode&AuthCert != 0 {
		cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate: %w", ErrConfig, err)
		}
		ca, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: CA file: %w", ErrConfig, err)
		}
		s.roots = x509.NewCertPool()
		if !s.roots.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrConfig, s.CAFile)
		}
		s.cert = cert
	} else {
		cert, err := ephemeralCert()
		if err != nil {
			return nil, fmt.Errorf("transport: ephemeral certificate: %w", err)
		}
		s.cert = cert
	}
	return s, nil
}

// alpn is the TLS application protocol, so that a migrate peer never talks
// to another TLS service by mistake, nor the other way round.
const alpn = "github.com/procmig/migrate/1"

func (s *settings) baseTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpn},
		Certificates: []tls.Certificate{s.cert},
		// Full-size records from the first byte: throughput matters here,
		// the first-packet latency of a web page does not.
		DynamicRecordSizingDisabled: true,
	}
}

// clientTLS is the TLS config of Dial. Without certificates the client does
// not check the server's (ephemeral, self-signed) certificate: the secret
// proofs, bound to the TLS session, authenticate it instead; in insecure
// mode nothing does.
func (s *settings) clientTLS(addr string) (*tls.Config, error) {
	tc := s.baseTLS()
	if s.mode&AuthCert == 0 {
		tc.InsecureSkipVerify = true
		return tc, nil
	}
	tc.RootCAs = s.roots
	tc.ServerName = s.ServerName
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("%w: address %q: %w", ErrConfig, addr, err)
		}
		tc.ServerName = host
	}
	return tc, nil
}

func (s *settings) serverTLS() *tls.Config {
	tc := s.baseTLS()
	tc.SessionTicketsDisabled = true
	if s.mode&AuthCert != 0 {
		// RequireAndVerifyClientCert, except that a dialer without a
		// certificate from our CA (Go's client sends none when it has
		// none the CA list accepts) fails with an error we can type,
		// not with crypto/tls's untyped "client didn't provide a
		// certificate".
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		tc.ClientCAs = s.roots
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
				return errNoClientCert
			}
			return nil
		}
	}
	return tc
}

var errNoClientCert = errors.New("the dialer presented no certificate signed by our CA")

// ephemeralCert makes a self-signed ECDSA P-256 certificate that lives as
// long as the process. It identifies nothing; it only lets TLS run.
func ephemeralCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "migrate ephemeral"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
