package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// RunConsoleSessions runs the console-session part of the contract (Run
// includes it), each subtest on its own fresh store.
func RunConsoleSessions(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s agentotp.Store)
	}{
		{"RoundTrip", testConsoleSessionRoundTrip},
		{"MissingIsNotFound", testConsoleSessionMissing},
		{"TouchOnlyMovesForward", testConsoleSessionTouch},
		{"DeleteStale", testConsoleSessionStale},
		{"DeletingTheUserEndsTheirSessions", testConsoleSessionUserDeleted},
		{"Uniqueness", testConsoleSessionUniqueness},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func consoleSession(u *agentotp.User, name string, seen, expires time.Duration) *agentotp.ConsoleSession {
	return &agentotp.ConsoleSession{
		Hash: agentotp.HashSecret("session-" + name), UserID: u.ID, KeyHash: u.KeyHash,
		CreatedAt: base, LastSeenAt: at(seen), ExpiresAt: at(expires),
	}
}

func createConsoleSession(t *testing.T, s agentotp.Store, cs *agentotp.ConsoleSession) {
	t.Helper()
	update(t, s, func(tx agentotp.Tx) error { return tx.CreateConsoleSession(context.Background(), cs) })
}

func testConsoleSessionRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	u := createUser(t, s, "ann")
	cs := consoleSession(u, "a", time.Minute, 12*time.Hour)
	createConsoleSession(t, s, cs)
	got, err := s.ConsoleSession(ctx, cs.Hash)
	require.NoError(t, err)
	require.Equal(t, cs, got)

	update(t, s, func(tx agentotp.Tx) error { return tx.DeleteConsoleSession(ctx, cs.Hash) })
	_, err = s.ConsoleSession(ctx, cs.Hash)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
}

func testConsoleSessionMissing(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	hash := agentotp.HashSecret("nobody")
	_, err := s.ConsoleSession(ctx, hash)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	for name, fn := range map[string]func(tx agentotp.Tx) error{
		"touch":  func(tx agentotp.Tx) error { return tx.TouchConsoleSession(ctx, hash, base) },
		"delete": func(tx agentotp.Tx) error { return tx.DeleteConsoleSession(ctx, hash) },
		"create for an unknown user": func(tx agentotp.Tx) error {
			return tx.CreateConsoleSession(ctx, &agentotp.ConsoleSession{Hash: hash, UserID: agentotp.NewUserID(),
				KeyHash: hash, CreatedAt: base, LastSeenAt: base, ExpiresAt: at(time.Hour)})
		},
	} {
		require.ErrorIs(t, s.Update(ctx, fn), agentotp.ErrNotFound, name)
	}
}

func testConsoleSessionTouch(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	cs := consoleSession(createUser(t, s, "ann"), "a", 0, time.Hour)
	createConsoleSession(t, s, cs)
	for _, tc := range []struct {
		touch, want time.Duration
	}{
		{5 * time.Minute, 5 * time.Minute},
		{2 * time.Minute, 5 * time.Minute}, // a late writer does not move it back
		{7 * time.Minute, 7 * time.Minute},
	} {
		update(t, s, func(tx agentotp.Tx) error { return tx.TouchConsoleSession(ctx, cs.Hash, at(tc.touch)) })
		got, err := s.ConsoleSession(ctx, cs.Hash)
		require.NoError(t, err)
		require.Equal(t, at(tc.want), got.LastSeenAt)
		require.Equal(t, cs.ExpiresAt, got.ExpiresAt, "activity never extends the absolute end")
	}
}

func testConsoleSessionStale(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	u := createUser(t, s, "ann")
	now, idleSince := at(time.Hour), at(30*time.Minute)
	sessions := []struct {
		cs   *agentotp.ConsoleSession
		kept bool
	}{
		{consoleSession(u, "live", 50*time.Minute, 2*time.Hour), true},
		{consoleSession(u, "seen exactly at the idle bound", 30*time.Minute, 2*time.Hour), true},
		{consoleSession(u, "idle", 29*time.Minute, 2*time.Hour), false},
		{consoleSession(u, "expires exactly now", 59*time.Minute, time.Hour), false},
		{consoleSession(u, "expired", 59*time.Minute, 59*time.Minute), false},
	}
	for _, x := range sessions {
		createConsoleSession(t, s, x.cs)
	}
	var n int
	update(t, s, func(tx agentotp.Tx) (err error) {
		n, err = tx.DeleteStaleConsoleSessions(ctx, now, idleSince)
		return err
	})
	require.Equal(t, 3, n)
	for _, x := range sessions {
		_, err := s.ConsoleSession(ctx, x.cs.Hash)
		if x.kept {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, agentotp.ErrNotFound)
		}
	}
}

func testConsoleSessionUserDeleted(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	ann, bob := createUser(t, s, "ann"), createUser(t, s, "bob")
	a, b := consoleSession(ann, "a", 0, time.Hour), consoleSession(bob, "b", 0, time.Hour)
	createConsoleSession(t, s, a)
	createConsoleSession(t, s, b)
	update(t, s, func(tx agentotp.Tx) error { return tx.DeleteUser(ctx, ann.ID) })
	_, err := s.ConsoleSession(ctx, a.Hash)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	_, err = s.ConsoleSession(ctx, b.Hash)
	require.NoError(t, err)
}

func testConsoleSessionUniqueness(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	cs := consoleSession(createUser(t, s, "ann"), "a", 0, time.Hour)
	createConsoleSession(t, s, cs)
	err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateConsoleSession(ctx, cs) })
	require.ErrorIs(t, err, agentotp.ErrConflict)
}
