package postgres

// LockKey exposes the advisory lock keys to the tests, which take them from
// another session as a competing instance would.
func (s *Store) LockKey(name string) int64 { return s.lockKey(name) }

// Statements that must find their row by primary key, for the plan test.
var (
	SpendTokenSQL = spendTokenSQL
	IssueTokenSQL = issueTokenSQL
)
