package transport

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestControl(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewControl(a), NewControl(b)
	defer ca.Close()
	defer cb.Close()
	go func() { ca.Send(&Commit{}) }()
	m, err := cb.Recv(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*Commit); !ok {
		t.Fatalf("got %T, want *Commit", m)
	}
	// A cancelled context ends a blocked Recv with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := cb.Recv(ctx); done <- err }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv did not return after its context was cancelled")
	}
	// Close ends a blocked Recv too.
	go func() { _, err := ca.Recv(context.Background()); done <- err }()
	cb.Close()
	ca.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Recv on a closed stream succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv did not return after Close")
	}
}
