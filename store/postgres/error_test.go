package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

func TestErrorTranslation(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := open(t, dsn, postgres.Options{LockTimeout: 50 * time.Millisecond})
	a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "a", KeyHash: "h"}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }))

	perm := func(mod func(p *agentotp.Permission)) func(tx agentotp.Tx) error {
		return func(tx agentotp.Tx) error {
			p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.ID, Status: agentotp.StatusPending, Uses: 1}
			mod(p)
			return tx.CreatePermission(ctx, p)
		}
	}
	cases := []struct {
		name string
		fn   func(tx agentotp.Tx) error
		want error
	}{
		{"negative uses remaining", perm(func(p *agentotp.Permission) { p.UsesRemaining = -1 }), agentotp.ErrValidation},
		{"unknown status", perm(func(p *agentotp.Permission) { p.Status = "bogus" }), agentotp.ErrValidation},
		{"unencodable scope", perm(func(p *agentotp.Permission) { p.Scope = map[string]any{"f": func() {}} }), agentotp.ErrValidation},
		{"NUL byte in a text", perm(func(p *agentotp.Permission) { p.Action = "db\x00query" }), agentotp.ErrValidation},
		{"invalid UTF-8 in a text", perm(func(p *agentotp.Permission) { p.Resource = "\xff\xfe" }), agentotp.ErrValidation},
		{"time outside the encodable range", func(tx agentotp.Tx) error {
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Date(1200, 1, 1, 0, 0, 0, 0, time.UTC), Type: agentotp.EventUse})
		}, agentotp.ErrValidation},
		{"invalid pre-sealed details", func(tx agentotp.Tx) error {
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Type: agentotp.EventUse, DetailsJSON: []byte("{not json")})
		}, agentotp.ErrValidation},
		{"unknown agent", perm(func(p *agentotp.Permission) { p.AgentID = agentotp.NewAgentID() }), agentotp.ErrNotFound},
		{"vote on an unknown permission", func(tx agentotp.Tx) error {
			return tx.AddApproval(ctx, agentotp.Approval{PermissionID: agentotp.NewPermissionID(), Approved: true})
		}, agentotp.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(ctx, tc.fn)
			require.ErrorIs(t, err, tc.want)
			var e *agentotp.Error
			require.ErrorAs(t, err, &e)
			require.NotContains(t, e.Message, "SQLSTATE", "the client message must not leak SQL")
		})
	}

	t.Run("fn going on after a failed statement", func(t *testing.T) {
		// PostgreSQL refuses every statement after a failed one: the
		// calls that follow fail, and so does the Update, writing nothing.
		var later error
		err := s.Update(ctx, func(tx agentotp.Tx) error {
			_ = tx.AddApproval(ctx, agentotp.Approval{PermissionID: agentotp.NewPermissionID(), Approved: true})
			later = tx.CreateAgent(ctx, &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "after", KeyHash: "after"})
			return nil
		})
		require.Error(t, err)
		require.Equal(t, agentotp.CodeInternal, agentotp.ErrorCode(err))
		require.ErrorContains(t, later, "aborted by an earlier failure")
		_, total, err := s.Agents(ctx, agentotp.Page{})
		require.NoError(t, err)
		require.Equal(t, 1, total)
	})

	t.Run("a conflict leaves the transaction usable", func(t *testing.T) {
		// The service records a refused second vote in the same transaction.
		u := &agentotp.User{ID: agentotp.NewUserID(), Name: "voter", KeyHash: "uh"}
		p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.ID, Status: agentotp.StatusPending, Uses: 1}
		vote := agentotp.Approval{PermissionID: p.ID, UserID: u.ID, Approved: true}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
			return errors.Join(tx.CreateUser(ctx, u), tx.CreatePermission(ctx, p), tx.AddApproval(ctx, vote))
		}))
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
			require.ErrorIs(t, tx.AddApproval(ctx, vote), agentotp.ErrConflict)
			require.ErrorIs(t, tx.CreatePermission(ctx, p), agentotp.ErrConflict)
			require.ErrorIs(t, tx.CreateAgent(ctx, a), agentotp.ErrConflict)
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Now(), Type: agentotp.EventDecideRejected, ActorType: "user"})
		}))
	})

	t.Run("another instance holds the writer lock", func(t *testing.T) {
		conn := raw(t, dsn)
		_, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", s.LockKey("writer"))
		require.NoError(t, err)
		err = s.Update(ctx, func(agentotp.Tx) error { return nil })
		require.ErrorIs(t, err, agentotp.ErrUnavailable)
		_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", s.LockKey("writer"))
		require.NoError(t, err)
		require.NoError(t, s.Update(ctx, func(agentotp.Tx) error { return nil }), "works again once the lock is gone")
	})

	t.Run("the server ends every session", func(t *testing.T) {
		// As a restart or a failover does: the pool's connections die.
		_, err := raw(t, dsn).Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`)
		require.NoError(t, err)
		for range 5 {
			err := s.Update(ctx, func(tx agentotp.Tx) error { _, err := tx.Agent(ctx, a.ID); return err })
			if err == nil {
				break
			}
			require.ErrorIs(t, err, agentotp.ErrUnavailable, "a lost connection is SERVICE_UNAVAILABLE, never an internal error")
		}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { _, err := tx.Agent(ctx, a.ID); return err }))
		_, err = s.Agent(ctx, a.ID)
		require.NoError(t, err)
	})

	t.Run("closed", func(t *testing.T) {
		s := open(t, dsn, postgres.Options{})
		require.NoError(t, s.Close())
		require.ErrorIs(t, s.Update(ctx, func(agentotp.Tx) error { return nil }), agentotp.ErrUnavailable)
		_, err := s.Agent(ctx, a.ID)
		require.ErrorIs(t, err, agentotp.ErrUnavailable)
	})
}
