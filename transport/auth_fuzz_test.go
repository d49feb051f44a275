package transport

import (
	"bytes"
	"crypto/hmac"
	"errors"
	"io"
	"testing"
)

// script is one end of an exchange: it reads the peer's bytes from in and
// keeps what it is sent.
type script struct {
	in  io.Reader
	out bytes.Buffer
}

func (s *script) Read(b []byte) (int, error)  { return s.in.Read(b) }
func (s *script) Write(b []byte) (int, error) { return s.out.Write(b) }

var fuzzEKM = bytes.Repeat([]byte{0x42}, 32)

func fuzzSettings(t testing.TB) *settings {
	s, err := Config{Secret: testSecret}.settings()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// realExchange runs a real dialer against a real listener over pipes and
// returns what each sent.
func realExchange(t testing.TB, ds, ls *settings) (dialerSent, listenerSent []byte) {
	dr, lw := io.Pipe()
	lr, dw := io.Pipe()
	done := make(chan struct{})
	var lsent bytes.Buffer
	go func() {
		defer close(done)
		listenerExchange(struct {
			io.Reader
			io.Writer
		}{lr, io.MultiWriter(lw, &lsent)}, ls, fuzzEKM)
		lw.Close()
	}()
	var dsent bytes.Buffer
	dialerExchange(struct {
		io.Reader
		io.Writer
	}{dr, io.MultiWriter(dw, &dsent)}, ds, [16]byte{1, 2, 3}, fuzzEKM)
	dw.Close()
	<-done
	return dsent.Bytes(), lsent.Bytes()
}

// FuzzListenerAuth plays any bytes as the dialer's side of the exchange to
// a listener with a secret. It must never panic, and must accept only a
// dialer whose final message carries the right proof for the hello it
// sent and the reply it got.
func FuzzListenerAuth(f *testing.F) {
	s := fuzzSettings(f)
	good, _ := realExchange(f, s, s)
	f.Add(good)
	f.Add(good[:helloSize])
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	f.Add(bad)
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &script{in: bytes.NewReader(in)}
		id, err := listenerExchange(c, s, fuzzEKM)
		if err != nil {
			if !errors.Is(err, ErrAuth) && !errors.Is(err, ErrHandshake) {
				t.Fatalf("error %v is neither ErrAuth nor ErrHandshake", err)
			}
			return
		}
		sent := c.out.Bytes()
		if len(in) < helloSize+finalSize || len(sent) < replySize {
			t.Fatalf("accepted after %d bytes in, %d out", len(in), len(sent))
		}
		want := proof(s.Secret, roleDialer, fuzzEKM, in[:helloSize], sent[:replySigned])
		if !hmac.Equal(want, in[helloSize+1:helloSize+finalSize]) {
			t.Fatalf("accepted dialer %s without the right proof", id)
		}
	})
}

// FuzzDialerAuth plays any bytes as the listener's side to a dialer with a
// secret. It must never panic, and must accept only a listener whose reply
// carries the right proof; and it must send its own proof to no other.
func FuzzDialerAuth(f *testing.F) {
	s := fuzzSettings(f)
	_, good := realExchange(f, s, s)
	f.Add(good)
	f.Add(good[:replySize])
	bad := bytes.Clone(good)
	bad[20] ^= 1
	f.Add(bad)
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &script{in: bytes.NewReader(in)}
		err := dialerExchange(c, s, [16]byte{9}, fuzzEKM)
		sent := c.out.Bytes()
		if err != nil && !errors.Is(err, ErrAuth) && !errors.Is(err, ErrHandshake) {
			t.Fatalf("error %v is neither ErrAuth nor ErrHandshake", err)
		}
		var listenerOK bool
		if len(in) >= replySize && len(sent) >= helloSize {
			want := proof(s.Secret, roleListener, fuzzEKM, sent[:helloSize], in[:replySigned])
			listenerOK = hmac.Equal(want, in[12:12+proofSize])
		}
		if err == nil && !listenerOK {
			t.Fatalf("accepted a listener without the right proof")
		}
		if !listenerOK && len(sent) > helloSize && !bytes.Equal(sent[helloSize+1:], make([]byte, len(sent)-helloSize-1)) {
			t.Fatalf("sent %x to a listener without the right proof", sent[helloSize:])
		}
	})
}
