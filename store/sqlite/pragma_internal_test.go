package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Durability rests on these settings, so check them on the live pools.
func TestConnectionSettings(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		sync string
		want int // PRAGMA synchronous: 1 NORMAL, 2 FULL
	}{{"", 2}, {"FULL", 2}, {"NORMAL", 1}}
	for _, tc := range cases {
		t.Run("sync="+tc.sync, func(t *testing.T) {
			s, err := Open(ctx, filepath.Join(t.TempDir(), "p.db"), Options{Synchronous: tc.sync})
			require.NoError(t, err)
			defer s.Close()
			get := func(q querier, name string) any {
				var v any
				require.NoError(t, q.QueryRowContext(ctx, "PRAGMA "+name).Scan(&v))
				return v
			}
			require.Equal(t, int64(tc.want), get(s.writer, "synchronous"))
			require.Equal(t, "wal", get(s.writer, "journal_mode"))
			require.Equal(t, int64(1), get(s.writer, "foreign_keys"))
			require.Equal(t, int64(10000), get(s.writer, "busy_timeout"))
			require.Equal(t, int64(1), get(s.reader, "foreign_keys"))
			require.Equal(t, int64(1), get(s.reader, "query_only"))
			_, err = s.reader.ExecContext(ctx, "DELETE FROM agents")
			require.Error(t, err, "the read pool cannot write")
		})
	}
}
