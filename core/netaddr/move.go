package netaddr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/procmig/migrate/core/hook"
)

// Mover moves service addresses with the migrations of one side, as
// built-in hooks (Install): on the source it deletes them after the dump
// and, on an abort, puts back the ones it deleted; on the target it adds
// and announces them before the resume and, on an abort, deletes the ones
// it added. What it changed is remembered per session (MIGRATE_SESSION),
// so that an abort undoes only that, with several sessions at once.
type Mover struct {
	addrs []Addr
	log   *slog.Logger

	mu      sync.Mutex
	changed map[string][]Addr // by session: deleted (source) or added (target)
}

// NewMover returns a Mover of addrs; log (nil: none) hears of what it
// does and of the announcements that fail (which do not fail a migration:
// the neighbours' caches expire in the end).
func NewMover(addrs []Addr, log *slog.Logger) *Mover {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Mover{addrs: addrs, log: log, changed: map[string][]Addr{}}
}

// Install adds the Mover's hooks for the role of s.
func (m *Mover) Install(s *hook.Set) error {
	if len(m.addrs) == 0 {
		return nil
	}
	var errs []error
	add := func(stage hook.Stage, name string, fn hook.Func) {
		errs = append(errs, s.AddFunc(stage, name, fn))
	}
	switch s.Role() {
	case hook.Source:
		add(hook.PostDump, "release the service addresses", m.release)
		add(hook.Abort, "take the service addresses back", m.undo)
	case hook.Target:
		add(hook.PreResume, "take the service addresses", m.take)
		add(hook.Abort, "release the service addresses", m.undo)
	default:
		return fmt.Errorf("netaddr: no role %q", s.Role())
	}
	add(hook.PostResume, "forget the service addresses' moves", m.forget)
	return errors.Join(errs...)
}

func session(env map[string]string) string { return env["MIGRATE_SESSION"] }

// release deletes the addresses (the source, after the dump).
func (m *Mover) release(_ context.Context, env map[string]string) error {
	for _, a := range m.addrs {
		removed, err := Del(a)
		if err != nil {
			return err
		}
		if removed {
			m.note(session(env), a)
			m.log.Info("service address released", "addr", a.String())
		}
	}
	return nil
}

// take adds and announces the addresses (the target, before the resume).
func (m *Mover) take(_ context.Context, env map[string]string) error {
	for _, a := range m.addrs {
		added, err := Add(a)
		if err != nil {
			return err
		}
		if added {
			m.note(session(env), a)
		}
		if err := Announce(a); err != nil {
			m.log.Warn("service address not announced", "addr", a.String(), "err", err)
		}
		m.log.Info("service address taken", "addr", a.String(), "added", added)
	}
	return nil
}

// undo reverses what this side changed in the session: the source adds
// back (and announces) what it deleted, the target deletes what it added.
func (m *Mover) undo(_ context.Context, env map[string]string) error {
	m.mu.Lock()
	changed := m.changed[session(env)]
	delete(m.changed, session(env))
	m.mu.Unlock()
	var errs []error
	for _, a := range changed {
		var err error
		if env["MIGRATE_ROLE"] == string(hook.Source) {
			if _, err = Add(a); err == nil {
				if aerr := Announce(a); aerr != nil {
					m.log.Warn("service address not announced", "addr", a.String(), "err", aerr)
				}
			}
		} else {
			_, err = Del(a)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("service address move undone", "addr", a.String(), "role", env["MIGRATE_ROLE"])
	}
	return errors.Join(errs...)
}

func (m *Mover) forget(_ context.Context, env map[string]string) error {
	m.mu.Lock()
	delete(m.changed, session(env))
	m.mu.Unlock()
	return nil
}

func (m *Mover) note(sess string, a Addr) {
	m.mu.Lock()
	m.changed[sess] = append(m.changed[sess], a)
	m.mu.Unlock()
}
