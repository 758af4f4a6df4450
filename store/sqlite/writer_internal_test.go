package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The writer runs its own BEGIN, COMMIT and ROLLBACK on one connection, so
// it must never leave that connection inside a transaction: one failure
// would otherwise fail every write after it.
func TestWriterConnection(t *testing.T) {
	ctx := context.Background()
	newAgent := func(name string) *agentotp.Agent {
		return &agentotp.Agent{ID: agentotp.NewAgentID(), Name: name, KeyHash: "h-" + name}
	}
	create := func(s *Store, ctx context.Context, a *agentotp.Agent) error {
		return s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) })
	}
	stored := func(t *testing.T, s *Store, a *agentotp.Agent) bool {
		t.Helper()
		_, err := s.Agent(ctx, a.ID)
		if errors.Is(err, agentotp.ErrNotFound) {
			return false
		}
		require.NoError(t, err)
		return true
	}

	openWriter := func(t *testing.T) *Store {
		s, err := Open(ctx, filepath.Join(t.TempDir(), "w.db"), Options{})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	}

	t.Run("a transaction left open is ended before the next batch", func(t *testing.T) {
		s := openWriter(t)
		require.NoError(t, s.lockWriter(ctx))
		_, err := s.writer.ExecContext(ctx, "BEGIN IMMEDIATE")
		<-s.writerSem
		require.NoError(t, err)

		a := newAgent("after")
		require.NoError(t, create(s, ctx, a))
		require.True(t, stored(t, s, a))
	})

	t.Run("a failed first job rolls back and the writer goes on", func(t *testing.T) {
		s := openWriter(t)
		boom := errors.New("boom")
		bad := newAgent("bad")
		require.ErrorIs(t, s.Update(ctx, func(tx agentotp.Tx) error {
			if err := tx.CreateAgent(ctx, bad); err != nil {
				return err
			}
			return boom
		}), boom)
		good := newAgent("good")
		require.NoError(t, create(s, ctx, good))
		require.False(t, stored(t, s, bad), "rolled back")
		require.True(t, stored(t, s, good))
	})

	t.Run("a held batch keeps its writes invisible; Vacuum and Ping wait for it, or for their context", func(t *testing.T) {
		s := openWriter(t)
		held := newAgent("held")
		ran := make(chan struct{})
		heldDone := make(chan error, 1)
		background := agentotp.WithCommitDelay(ctx, 500*time.Millisecond)
		go func() {
			heldDone <- s.Update(background, func(tx agentotp.Tx) error {
				err := tx.CreateAgent(ctx, held)
				close(ran)
				return err
			})
		}()
		<-ran // written, and held open waiting for company
		require.False(t, stored(t, s, held), "not visible before its commit")

		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, s.Ping(short), context.DeadlineExceeded, "a ping gives up with its context")

		start := time.Now()
		require.NoError(t, s.Ping(ctx))
		require.NoError(t, s.Vacuum(ctx))
		require.NoError(t, <-heldDone)
		require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "waited for the held batch")
		require.True(t, stored(t, s, held))
	})

	t.Run("jobs after a failed one in a batch still commit", func(t *testing.T) {
		s := openWriter(t)
		boom := errors.New("boom")
		bad := newAgent("bad")
		commits := s.Stats().Commits
		ran := make(chan struct{})
		badDone := make(chan error, 1)
		go func() {
			// Held, so that the next update joins its batch.
			badDone <- s.Update(agentotp.WithCommitDelay(ctx, time.Minute), func(tx agentotp.Tx) error {
				defer close(ran)
				if err := tx.CreateAgent(ctx, bad); err != nil {
					return err
				}
				return boom
			})
		}()
		<-ran
		good := newAgent("good")
		require.NoError(t, create(s, ctx, good))
		require.ErrorIs(t, <-badDone, boom)
		require.False(t, stored(t, s, bad), "rolled back to its savepoint")
		require.True(t, stored(t, s, good))
		require.Equal(t, commits+1, s.Stats().Commits, "one commit for the batch")
	})
}

// A batch starts from the audit head the last batch left, unless another
// connection committed since: then it reads the head and checks it again
// (the tampering tests in the root package show a tampered head refused).
func TestWriterRemembersAuditHead(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := Open(ctx, path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	boom := errors.New("boom")
	appendEvent := func(s *Store, fail bool) (statements int64, err error) {
		before := s.Stats().Statements
		err = s.Update(ctx, func(tx agentotp.Tx) error {
			if err := tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Now(), Type: agentotp.EventRequest, ActorType: "system", ActorID: "test"}); err != nil {
				return err
			}
			if fail {
				return boom
			}
			return nil
		})
		return s.Stats().Statements - before, err
	}

	read, err := appendEvent(s, false)
	require.NoError(t, err)
	remembered, err := appendEvent(s, false)
	require.NoError(t, err)
	require.Equal(t, read-1, remembered, "the second batch does not read the head again")

	_, err = appendEvent(s, true)
	require.ErrorIs(t, err, boom)
	again, err := appendEvent(s, false)
	require.NoError(t, err)
	require.Equal(t, remembered, again, "a batch that rolled back left the head it started from")

	other, err := Open(ctx, path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })
	_, err = appendEvent(other, false)
	require.NoError(t, err)
	again, err = appendEvent(s, false)
	require.NoError(t, err)
	require.Equal(t, read, again, "another connection's commit: the head is read again")

	v := agentotp.NewChainVerifier()
	require.NoError(t, s.ScanAudit(ctx, v.Next))
	require.EqualValues(t, 5, v.Checked, "one chain across the rollback and both connections")
}

// AppendAudits stores a run of events in one statement when none of them
// has its permission's trail read, and one by one otherwise: a token issue
// and a use of a permission made by an earlier job are held to the trail,
// and the use must see the issue before it (a keyed chain compares the
// stored token with the one the latest issue recorded).
func TestAppendAudits(t *testing.T) {
	ctx := context.Background()
	key, err := agentotp.NewAuditKey([]byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	s, err := Open(ctx, filepath.Join(t.TempDir(), "a.db"), Options{AuditKey: key})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	now := time.Now()
	agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "a", KeyHash: "h-a"}
	p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "x", Status: agentotp.StatusApproved,
		CreatedAt: now, UpdatedAt: now, TokenHash: agentotp.HashSecret("t1"), TokenIssuedAt: now, TokenTTL: time.Hour,
		TokenExpiresAt: now.Add(time.Hour), Uses: 1, UsesRemaining: 1}
	event := func(typ agentotp.EventType, d map[string]any) *agentotp.AuditEvent {
		return &agentotp.AuditEvent{Time: now, Type: typ, ActorType: "agent", ActorID: string(agent.ID),
			AgentID: agent.ID, PermissionID: p.ID, Details: d}
	}
	statements := func(fn func(tx agentotp.Tx) error) int64 {
		t.Helper()
		before := s.Stats().Statements
		require.NoError(t, s.Update(ctx, fn))
		return s.Stats().Statements - before
	}

	// Created in the same job: request and approve in one insert.
	var events []*agentotp.AuditEvent
	n := statements(func(tx agentotp.Tx) error {
		if err := tx.CreateAgent(ctx, agent); err != nil {
			return err
		}
		if err := tx.CreatePermission(ctx, p); err != nil {
			return err
		}
		events = []*agentotp.AuditEvent{event(agentotp.EventRequest, map[string]any{"uses": 1}),
			event(agentotp.EventApprove, map[string]any{"token": map[string]any{"uses": 1}})}
		return tx.(agentotp.AuditAppender).AppendAudits(ctx, events)
	})
	// BEGIN, data_version, the agent, the permission, the head read, one
	// insert for both events, the head write, COMMIT.
	require.EqualValues(t, 8, n)
	require.NotEmpty(t, events[1].TokenRef, "the approval records its token")

	// A later job re-issues the token and spends it: one by one, with the
	// use held to the issue just recorded.
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		q := *p
		q.TokenHash = agentotp.HashSecret("t2")
		if err := tx.UpdatePermission(ctx, &q, agentotp.StatusApproved); err != nil {
			return err
		}
		left, err := tx.SpendToken(ctx, p.ID, agent.ID, q.TokenHash, now)
		if err != nil {
			return err
		}
		return tx.(agentotp.AuditAppender).AppendAudits(ctx, []*agentotp.AuditEvent{
			event(agentotp.EventTokenIssue, map[string]any{"uses": 1}),
			event(agentotp.EventUse, map[string]any{"usesRemaining": left})})
	}))

	v := agentotp.NewKeyedChainVerifier(key)
	require.NoError(t, s.ScanAudit(ctx, v.Next))
	require.EqualValues(t, 4, v.Checked)
}
