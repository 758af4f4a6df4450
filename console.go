package agentotp

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"time"
)

// ConsoleSession is a person signed in to the web console. Their browser
// holds the session's secret in a cookie; the store keeps only its SHA-256,
// so a copy of the database signs nobody in, and deleting the row ends the
// session everywhere.
type ConsoleSession struct {
	// Hash is the SHA-256 of the session secret: the session's identity.
	Hash   string
	UserID UserID
	// KeyHash is the user's key hash when they signed in. A session lasts
	// only while the user still holds that key: rotating it ends every
	// session opened with the old one.
	KeyHash    string
	CreatedAt  time.Time
	LastSeenAt time.Time
	// ExpiresAt ends the session however active it is.
	ExpiresAt time.Time
}

// ConsoleSessionStore is what the store keeps of console sessions.
type ConsoleSessionStore interface {
	// ConsoleSession reads the session with this secret hash; NOT_FOUND
	// when there is none.
	ConsoleSession(ctx context.Context, hash string) (*ConsoleSession, error)
}

// ConsoleSessionTx changes console sessions inside a transaction.
type ConsoleSessionTx interface {
	CreateConsoleSession(ctx context.Context, cs *ConsoleSession) error
	// TouchConsoleSession records activity at at; NOT_FOUND when the
	// session is gone.
	TouchConsoleSession(ctx context.Context, hash string, at time.Time) error
	// DeleteConsoleSession removes one session; NOT_FOUND when absent.
	DeleteConsoleSession(ctx context.Context, hash string) error
	// DeleteStaleConsoleSessions removes the sessions that expired at or
	// before now or were last seen before idleSince, and counts them.
	DeleteStaleConsoleSessions(ctx context.Context, now, idleSince time.Time) (int, error)
}

// Console session limits. A session ends after ConsoleIdleTimeout without a
// page view or a decision, and ConsoleSessionLifetime after sign-in in any
// case: a forgotten tab on a shared machine does not stay signed in, and a
// stolen cookie is good for half a day at most.
const (
	ConsoleIdleTimeout     = 30 * time.Minute
	ConsoleSessionLifetime = 12 * time.Hour
	// consoleTouchEvery spaces the writes that record activity: the idle
	// clock is precise to a minute, not to a page view.
	consoleTouchEvery = time.Minute
)

// ConsoleSessionPrefix starts every console session secret.
const ConsoleSessionPrefix = "cs_"

// Console audit event types: who signed in to the console and out of it,
// and which known principals were refused (agent keys, disabled users).
const (
	EventConsoleSignIn         EventType = "console_sign_in"
	EventConsoleSignOut        EventType = "console_sign_out"
	EventConsoleSignInRejected EventType = "console_sign_in_rejected"
)

var (
	errBadConsoleKey  = Errorf(CodeUnauthorized, "invalid key")
	errNoConsole      = Errorf(CodeUnauthorized, "not signed in")
	errConsoleEnded   = Errorf(CodeUnauthorized, "your session has ended: sign in again")
	errConsoleAgent   = Errorf(CodeForbidden, "agent keys cannot sign in to the console: sign in with a user key (uk_…)")
	errConsoleNoRole  = Errorf(CodeForbidden, "this user may not decide requests")
	errConsoleDisable = Errorf(CodeForbidden, "this user is disabled")
)

// validConsoleSecret reports whether s has the shape of a session secret.
func validConsoleSecret(s string) bool {
	if len(s) != len(ConsoleSessionPrefix)+32 || !strings.HasPrefix(s, ConsoleSessionPrefix) {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s[len(ConsoleSessionPrefix):])
	return err == nil
}

// sessionRef names a session in the audit trail without its secret: the
// head of the secret's hash, enough to pair a sign-in with its sign-out.
func sessionRef(hash string) string { return hash[:16] }

// OpenConsoleSession signs the holder of a user key in to the console and
// returns the new session's secret, shown only now. Only active approvers
// and admins get one; an agent key is refused however valid, and refusals
// of known keys are audited.
func (s *Service) OpenConsoleSession(ctx context.Context, key string) (Secret, Principal, error) {
	if !ValidKeyFormat(key) {
		return "", Principal{}, errBadConsoleKey
	}
	hash := HashSecret(key)
	if strings.HasPrefix(key, AgentKeyPrefix) {
		a, err := s.store.AgentByKeyHash(ctx, hash)
		if err != nil || !EqualHash(a.KeyHash, hash) {
			return "", Principal{}, consoleAuthError(err)
		}
		s.refuseSignIn(ctx, Principal{Agent: a}, "agent keys cannot sign in to the console")
		return "", Principal{}, errConsoleAgent
	}
	u, err := s.store.UserByKeyHash(ctx, hash)
	if err != nil || !EqualHash(u.KeyHash, hash) {
		return "", Principal{}, consoleAuthError(err)
	}
	p := Principal{User: u}
	switch {
	case !u.Active:
		s.refuseSignIn(ctx, p, "user is disabled")
		return "", Principal{}, errConsoleDisable
	case !u.Role.CanDecide():
		s.refuseSignIn(ctx, p, "user may not decide requests")
		return "", Principal{}, errConsoleNoRole
	}
	secret := newKey(ConsoleSessionPrefix)
	now := s.clock()
	cs := &ConsoleSession{Hash: secret.Hash(), UserID: u.ID, KeyHash: u.KeyHash, CreatedAt: now, LastSeenAt: now,
		ExpiresAt: now.Add(ConsoleSessionLifetime)}
	err = s.store.Update(ctx, func(tx Tx) error {
		// Sign-ins are rare and rate limited: a fine moment to forget
		// the sessions that ended without a sign-out.
		if _, err := tx.DeleteStaleConsoleSessions(ctx, now, now.Add(-ConsoleIdleTimeout)); err != nil {
			return err
		}
		if err := tx.CreateConsoleSession(ctx, cs); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventConsoleSignIn, now, map[string]any{"session": sessionRef(cs.Hash)}))
	})
	if err != nil {
		return "", Principal{}, err
	}
	return secret, p, nil
}

func consoleAuthError(err error) error {
	if err == nil || errors.Is(err, ErrNotFound) {
		return errBadConsoleKey
	}
	return &Error{Code: CodeUnavailable, Message: "sign-in unavailable", Err: err}
}

// refuseSignIn audits a sign-in refused to a known principal. A failure to
// record it is logged: the caller is refused either way.
func (s *Service) refuseSignIn(ctx context.Context, p Principal, why string) {
	now := s.clock()
	err := s.store.Update(ctx, func(tx Tx) error {
		e := s.event(ctx, p, EventConsoleSignInRejected, now, map[string]any{"reason": why})
		if p.Agent != nil {
			e.AgentID = p.Agent.ID
		}
		return tx.AppendAudit(ctx, e)
	})
	if err != nil {
		s.log.Error("audit refused console sign-in", "err", err)
	}
}

// ResumeConsoleSession returns the person signed in with secret. The user
// is read again on every call, so a user disabled, deleted, stripped of
// their role or given a new key is signed out at their next click. active
// says the call is the person's own doing (a page view, a decision), which
// keeps an idle session alive; a live-update stream is not.
func (s *Service) ResumeConsoleSession(ctx context.Context, secret Secret, active bool) (Principal, error) {
	if !validConsoleSecret(secret.Reveal()) {
		return Principal{}, errNoConsole
	}
	hash := secret.Hash()
	cs, err := s.store.ConsoleSession(ctx, hash)
	if errors.Is(err, ErrNotFound) {
		return Principal{}, errNoConsole
	}
	if err != nil {
		return Principal{}, &Error{Code: CodeUnavailable, Message: "sessions unavailable", Err: err}
	}
	now := s.clock()
	u, err := s.store.User(ctx, cs.UserID)
	switch {
	case err != nil && !errors.Is(err, ErrNotFound):
		return Principal{}, &Error{Code: CodeUnavailable, Message: "sessions unavailable", Err: err}
	case err != nil, !now.Before(cs.ExpiresAt), now.Sub(cs.LastSeenAt) >= ConsoleIdleTimeout,
		!u.Active, !u.Role.CanDecide(), !EqualHash(u.KeyHash, cs.KeyHash):
		s.dropConsoleSession(ctx, hash)
		return Principal{}, errConsoleEnded
	}
	if active && now.Sub(cs.LastSeenAt) >= consoleTouchEvery {
		err := s.store.Update(ctx, func(tx Tx) error { return tx.TouchConsoleSession(ctx, hash, now) })
		if err != nil && !errors.Is(err, ErrNotFound) {
			// The session stays valid; it may only end a minute early.
			s.log.Warn("record console activity", "err", err)
		}
	}
	return Principal{User: u}, nil
}

// dropConsoleSession deletes a session found ended; it would be refused
// anyway, so a failure is only logged.
func (s *Service) dropConsoleSession(ctx context.Context, hash string) {
	err := s.store.Update(ctx, func(tx Tx) error { return tx.DeleteConsoleSession(ctx, hash) })
	if err != nil && !errors.Is(err, ErrNotFound) {
		s.log.Warn("delete ended console session", "err", err)
	}
}

// CloseConsoleSession signs out: the session is deleted, so its cookie
// signs nobody in any more, on any server sharing the store. Closing a
// session that is already gone is not an error.
func (s *Service) CloseConsoleSession(ctx context.Context, secret Secret) error {
	if !validConsoleSecret(secret.Reveal()) {
		return nil
	}
	hash := secret.Hash()
	cs, err := s.store.ConsoleSession(ctx, hash)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	now := s.clock()
	return s.store.Update(ctx, func(tx Tx) error {
		err := tx.DeleteConsoleSession(ctx, hash)
		if errors.Is(err, ErrNotFound) {
			return nil // signed out meanwhile, and audited there
		}
		if err != nil {
			return err
		}
		who := Principal{User: &User{ID: cs.UserID}}
		return tx.AppendAudit(ctx, s.event(ctx, who, EventConsoleSignOut, now, map[string]any{"session": sessionRef(hash)}))
	})
}

// MayDecide reports whether p may decide perm: an active approver or
// admin, named by the request's rule when the rule names approvers. It
// does not look at the request's status. Decide checks all of this again.
func (s *Service) MayDecide(p Principal, perm *Permission) bool {
	if p.IsAgent() || !p.Role().CanDecide() || (p.User != nil && !p.User.Active) {
		return false
	}
	return s.mayApprove(p, perm) == nil
}
