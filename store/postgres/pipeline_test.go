package postgres_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// An audit insert whose values PostgreSQL takes for certain travels with
// the next job's first statement, or with the COMMIT. Should it fail after
// all (here a trigger refuses it), its job fails with its error, the jobs
// after it (whose events were linked to it) fail as aborted, the jobs
// before it commit, and the chain stays whole.
func TestQueuedAuditInsertFailsLate(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := open(t, dsn, postgres.Options{AuditKey: testKey(t)})
	db := raw(t, dsn)
	_, err := db.Exec(ctx, `CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'boom refused'; END $$;
		CREATE TRIGGER refuse_boom BEFORE INSERT ON audit_events FOR EACH ROW
		WHEN (NEW.actor_id = 'boom') EXECUTE FUNCTION refuse_boom()`)
	require.NoError(t, err)
	appendEvent := func(tx agentotp.Tx, actor string) error {
		return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: t0, Type: agentotp.EventDecideRejected,
			ActorType: "user", ActorID: actor})
	}

	// One batch: [hold] then, in order, A appends; B appends the refused
	// event; C creates an agent (B's insert travels with it) and appends;
	// D appends (its insert travels with the COMMIT).
	batch := func(t *testing.T, jobs []func(agentotp.Tx) error) []error {
		hold := make(chan struct{})
		var first sync.WaitGroup
		first.Add(1)
		go func() {
			defer first.Done()
			_ = s.Update(ctx, func(agentotp.Tx) error { <-hold; return nil })
		}()
		time.Sleep(50 * time.Millisecond)
		errs := make([]error, len(jobs))
		var wg sync.WaitGroup
		for i, fn := range jobs {
			wg.Go(func() { errs[i] = s.Update(ctx, fn) })
			time.Sleep(20 * time.Millisecond) // queue in order
		}
		close(hold)
		wg.Wait()
		first.Wait()
		return errs
	}
	agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "c", KeyHash: "c"}
	errs := batch(t, []func(agentotp.Tx) error{
		func(tx agentotp.Tx) error { return appendEvent(tx, "a") },
		func(tx agentotp.Tx) error { return appendEvent(tx, "boom") },
		func(tx agentotp.Tx) error {
			if err := tx.CreateAgent(ctx, agent); err != nil {
				return err
			}
			return appendEvent(tx, "c")
		},
		func(tx agentotp.Tx) error { return appendEvent(tx, "d") },
	})
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], agentotp.ErrInternal)
	require.ErrorContains(t, errs[1], "boom refused")
	require.ErrorIs(t, errs[2], agentotp.ErrUnavailable, "C's events were linked to B's")
	require.NoError(t, errs[3], "D ran after B was rolled back")
	_, err = s.Agent(ctx, agent.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound, "C was rolled back")

	// The refused event last in the batch fails at COMMIT; those before
	// it commit.
	errs = batch(t, []func(agentotp.Tx) error{
		func(tx agentotp.Tx) error { return appendEvent(tx, "e") },
		func(tx agentotp.Tx) error { return appendEvent(tx, "boom") },
	})
	require.NoError(t, errs[0])
	require.ErrorContains(t, errs[1], "boom refused")

	// Alone in its transaction.
	require.ErrorContains(t, s.Update(ctx, func(tx agentotp.Tx) error { return appendEvent(tx, "boom") }), "boom refused")

	var actors []string
	require.NoError(t, s.ScanAudit(ctx, func(e *agentotp.AuditEvent) error {
		actors = append(actors, e.ActorID)
		return nil
	}))
	require.Equal(t, []string{"a", "d", "e"}, actors)
	verified(t, s)
}

// CreatePermission and SpendToken read the trail check's data in their own
// statement, and the events appended after them keep it current: the
// check must decide exactly as it does when it reads the trail afresh (a
// read in between makes it do so).
func TestTrailReadWithTheWrite(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := open(t, dsn, postgres.Options{AuditKey: testKey(t)})
	agent := newAgent(t, s, "trail")
	token := map[string]any{"token": map[string]any{"uses": 1}}
	cases := map[string][]agentotp.EventType{
		"request, approve":              {agentotp.EventRequest, agentotp.EventApprove},
		"approve alone":                 {agentotp.EventApprove},
		"request, token_issue":          {agentotp.EventRequest, agentotp.EventTokenIssue},
		"request, deny, approve":        {agentotp.EventRequest, agentotp.EventDeny, agentotp.EventApprove},
		"request, approve, use":         {agentotp.EventRequest, agentotp.EventApprove, agentotp.EventUse},
		"use alone":                     {agentotp.EventUse},
		"token_issue alone":             {agentotp.EventTokenIssue},
		"request, expire, token_issue":  {agentotp.EventRequest, agentotp.EventExpire, agentotp.EventTokenIssue},
		"request, decide_rejected, use": {agentotp.EventRequest, agentotp.EventDecideRejected, agentotp.EventUse},
	}
	run := func(types []agentotp.EventType, reread bool) (string, []string) {
		hash := agentotp.HashSecret(string(agentotp.NewToken()))
		p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "db.query",
			Status: agentotp.StatusApproved, CreatedAt: t0, Decision: agentotp.Decision{Effect: agentotp.EffectAutoApprove},
			Uses: 1, UsesRemaining: 1, TokenExpiresAt: t0.Add(time.Hour), TokenHash: hash, TokenIssuedAt: t0}
		var refs []string
		err := s.Update(ctx, func(tx agentotp.Tx) error {
			if err := tx.CreatePermission(ctx, p); err != nil {
				return err
			}
			for _, typ := range types {
				if reread {
					if _, err := tx.Agent(ctx, agent.ID); err != nil {
						return err
					}
				}
				var details map[string]any
				switch typ {
				case agentotp.EventApprove:
					details = token
				case agentotp.EventTokenIssue:
					details = map[string]any{"uses": 1}
				case agentotp.EventUse:
					details = map[string]any{"usesRemaining": 1}
				}
				e := event(typ, p, details)
				if err := tx.AppendAudit(ctx, e); err != nil {
					return err
				}
				refs = append(refs, e.TokenRef)
			}
			return nil
		})
		msg := "ok"
		if err != nil {
			msg = strings.ReplaceAll(err.Error(), string(p.ID), "P")
		}
		return msg, refs
	}
	for name, types := range cases {
		cached, cachedRefs := run(types, false)
		fresh, freshRefs := run(types, true)
		require.Equal(t, fresh, cached, name)
		require.Equal(t, len(freshRefs), len(cachedRefs), name)
		for i := range freshRefs {
			require.Equal(t, freshRefs[i] == "", cachedRefs[i] == "", name)
		}
	}

	// A spend followed by its use, and by a use of another permission.
	hash := agentotp.HashSecret(string(agentotp.NewToken()))
	p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "db.query",
		Status: agentotp.StatusApproved, CreatedAt: t0, Decision: agentotp.Decision{Effect: agentotp.EffectAutoApprove},
		Uses: 2, UsesRemaining: 2, TokenExpiresAt: t0.Add(time.Hour), TokenHash: hash, TokenIssuedAt: t0}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		if err := request(ctx, tx, p); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, event(agentotp.EventApprove, p, map[string]any{"token": map[string]any{"uses": 2}}))
	}))
	use := func() error {
		return s.Update(ctx, func(tx agentotp.Tx) error {
			left, err := tx.SpendToken(ctx, p.ID, agent.ID, hash, t0.Add(time.Second))
			if err != nil {
				return err
			}
			return tx.AppendAudit(ctx, event(agentotp.EventUse, p, map[string]any{"usesRemaining": left}))
		})
	}
	db := raw(t, dsn)
	_, err := db.Exec(ctx, `UPDATE permissions SET uses_remaining = 5 WHERE id = $1`, string(p.ID))
	require.NoError(t, err)
	err = use()
	require.ErrorIs(t, err, agentotp.ErrConflict, "a use of a row given more uses behind the trail's back is refused")
	require.ErrorContains(t, err, "audit events leave 2 uses, the stored row 5")
	_, err = db.Exec(ctx, `UPDATE permissions SET uses_remaining = 2 WHERE id = $1`, string(p.ID))
	require.NoError(t, err)
	require.NoError(t, use())
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		left, err := tx.SpendToken(ctx, p.ID, agent.ID, hash, t0.Add(time.Second))
		if err != nil {
			return err
		}
		if err := tx.AppendAudit(ctx, event(agentotp.EventDecideRejected, p, nil)); err != nil {
			return err // not a trail event: the read stays current
		}
		return tx.AppendAudit(ctx, event(agentotp.EventUse, p, map[string]any{"usesRemaining": left}))
	}))
	verified(t, s)
}
