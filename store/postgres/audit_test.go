package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

func appendN(t *testing.T, s agentotp.Store, n int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		for i := range n {
			e := &agentotp.AuditEvent{Time: time.Unix(1_900_000_000+int64(i), 7).UTC(), Type: agentotp.EventUse,
				ActorType: "agent", ActorID: "a", Details: map[string]any{"i": i}}
			if err := tx.AppendAudit(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}))
}

func verify(t *testing.T, s agentotp.Store) int64 {
	t.Helper()
	v := agentotp.NewChainVerifier()
	require.NoError(t, s.ScanAudit(context.Background(), v.Next))
	return v.Checked
}

// The database itself refuses to change or delete audit events, even for
// its superuser, as long as the triggers stand.
func TestAuditTriggers(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := open(t, dsn, postgres.Options{})
	appendN(t, s, 3)
	db := raw(t, dsn)
	for _, q := range []string{
		`UPDATE audit_events SET details_json = '{"x":1}' WHERE seq = 2`,
		`DELETE FROM audit_events WHERE seq = 3`,
		`TRUNCATE audit_events`,
	} {
		_, err := db.Exec(ctx, q)
		require.ErrorContains(t, err, "append-only", q)
	}
	require.Equal(t, int64(3), verify(t, s))
}

func TestTamperDetected(t *testing.T) {
	cases := []struct {
		name    string
		tamper  []string
		badSeq  int64
		checked int64 // events verified before the break
	}{
		{"edit details", []string{`UPDATE audit_events SET details_json = '{"i":99}' WHERE seq = 3`}, 3, 2},
		{"edit actor", []string{`UPDATE audit_events SET actor_id = 'someone else' WHERE seq = 4`}, 4, 3},
		{"edit time", []string{`UPDATE audit_events SET time = time + 1 WHERE seq = 1`}, 1, 0},
		{"delete a row", []string{`DELETE FROM audit_events WHERE seq = 3`}, 3, 2},
		{"delete the first row", []string{`DELETE FROM audit_events WHERE seq = 1`}, 1, 0},
		{"swap two rows' content", []string{
			`CREATE TEMP TABLE swap AS SELECT * FROM audit_events WHERE seq IN (3, 4)`,
			`DELETE FROM audit_events WHERE seq IN (3, 4)`,
			`INSERT INTO audit_events SELECT 7 - seq, id, time, type, actor_type, actor_id, agent_id,
				permission_id, request_id, details_json, prev_hash, hash, mac, token_ref FROM swap`,
		}, 3, 2},
		{"rehash one row without its successor", []string{
			`UPDATE audit_events SET details_json = '{"i":99}', hash = 'ff' WHERE seq = 2`,
		}, 2, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDatabase(t)
			s := open(t, dsn, postgres.Options{})
			appendN(t, s, 5)
			require.Equal(t, int64(5), verify(t, s), "untouched data verifies")

			db := raw(t, dsn)
			_, err := db.Exec(ctx, `ALTER TABLE audit_events DISABLE TRIGGER USER`)
			require.NoError(t, err)
			for _, q := range tc.tamper {
				_, err := db.Exec(ctx, q)
				require.NoError(t, err, q)
			}
			v := agentotp.NewChainVerifier()
			err = s.ScanAudit(ctx, v.Next)
			var ce *agentotp.ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.badSeq, ce.Seq, ce.Error())
			require.Equal(t, tc.checked, v.Checked)
		})
	}
}

// With a key, every instance checks the newest event against the signed
// head before it appends: a chain cut short, a head moved, or a store
// without the key is refused before anything is written.
func TestKeyedChainRefusesAppendsAfterTampering(t *testing.T) {
	key, err := agentotp.NewAuditKey([]byte(strings.Repeat("postgres audit key ", 2)))
	require.NoError(t, err)
	other, err := agentotp.NewAuditKey([]byte(strings.Repeat("another audit key! ", 2)))
	require.NoError(t, err)
	cases := []struct {
		name   string
		tamper string
		opts   postgres.Options
		want   string
	}{
		{"newest events deleted", `DELETE FROM audit_events WHERE seq > 3`, postgres.Options{AuditKey: key}, "the recorded head is seq 5 but the newest event is seq 3"},
		{"head moved back with them", `DELETE FROM audit_events WHERE seq > 3; UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_events WHERE seq = 3)`,
			postgres.Options{AuditKey: key}, "does not verify with the audit key"},
		{"head removed", `DELETE FROM audit_head`, postgres.Options{AuditKey: key}, "carries no MAC"},
		// Without MACs the chain would pass for one from before the key,
		// and could then be rewritten by anyone: it is refused.
		{"every MAC removed", `UPDATE audit_events SET mac = NULL, token_ref = NULL; UPDATE audit_head SET mac = NULL, key_id = NULL`,
			postgres.Options{AuditKey: key}, "no MAC at all although this store has an audit key"},
		{"opened without the key", ``, postgres.Options{}, "opened without the audit key"},
		{"opened with another key", ``, postgres.Options{AuditKey: other}, "wrong audit key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDatabase(t)
			appendN(t, open(t, dsn, postgres.Options{AuditKey: key}), 5)
			if tc.tamper != "" {
				_, err := raw(t, dsn).Exec(ctx, `ALTER TABLE audit_events DISABLE TRIGGER USER; `+tc.tamper)
				require.NoError(t, err)
			}
			s := open(t, dsn, tc.opts)
			err := s.Update(ctx, func(tx agentotp.Tx) error {
				return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Now(), Type: agentotp.EventPolicyReload, ActorType: "system"})
			})
			require.ErrorContains(t, err, tc.want)
			require.ErrorIs(t, err, agentotp.ErrInternal)
		})
	}
}

// A chain written without a key is keyed by an explicit adoption only: an
// audit_keyed event, the first with a MAC.
func TestUnkeyedChainAdopted(t *testing.T) {
	ctx := context.Background()
	key, err := agentotp.NewAuditKey([]byte(strings.Repeat("postgres audit key ", 2)))
	require.NoError(t, err)
	dsn := pgtest.NewDatabase(t)
	appendN(t, open(t, dsn, postgres.Options{}), 3)
	appendOne := func(s *postgres.Store) error {
		return s.Update(ctx, func(tx agentotp.Tx) error {
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Now(), Type: agentotp.EventPolicyReload, ActorType: "system"})
		})
	}
	require.ErrorContains(t, appendOne(open(t, dsn, postgres.Options{AuditKey: key})), "no MAC at all")
	require.NoError(t, appendOne(open(t, dsn, postgres.Options{AuditKey: key, AdoptUnkeyedChain: true})))
	require.NoError(t, appendOne(open(t, dsn, postgres.Options{AuditKey: key})), "adopted once, keyed for good")
	v := agentotp.NewKeyedChainVerifier(key)
	s := open(t, dsn, postgres.Options{AuditKey: key})
	require.NoError(t, s.ScanAudit(ctx, v.Next))
	require.Equal(t, int64(4), v.KeyedFrom, "keyed from the audit_keyed event")
	require.Equal(t, int64(6), v.Checked)
}
