package agentotp

import (
	"context"
	"time"
)

// Store is the persistence the service needs. Every write happens inside
// Update, in one transaction together with the audit events describing it:
// if appending the audit fails, the change fails. Implementations must make
// Update durable before it returns and safe across processes sharing the
// same database.
type Store interface {
	// Update runs fn in one write transaction. fn's error rolls back.
	// fn must not call Update again, and should read through its Tx: the
	// store's own read methods see only committed state. An update made
	// under WithCommitDelay may be held that long to share a commit.
	Update(ctx context.Context, fn func(Tx) error) error

	Permission(ctx context.Context, id PermissionID) (*Permission, error)
	Permissions(ctx context.Context, f PermissionFilter) ([]*Permission, int, error)
	// DuePermissions lists pending or approved permissions whose deadline
	// is at or before now, oldest first.
	DuePermissions(ctx context.Context, now time.Time, limit int) ([]*Permission, error)
	// CountPermissions counts an agent's permissions whose action matches
	// the glob-style pattern ('*' any run), created at or after since,
	// in any of the statuses (all when empty). Policy budgets use it.
	CountPermissions(ctx context.Context, agent AgentID, actionPattern string, since time.Time, statuses []Status) (int, error)

	Agent(ctx context.Context, id AgentID) (*Agent, error)
	AgentByKeyHash(ctx context.Context, hash string) (*Agent, error)
	Agents(ctx context.Context, p Page) ([]*Agent, int, error)

	User(ctx context.Context, id UserID) (*User, error)
	UserByKeyHash(ctx context.Context, hash string) (*User, error)
	UserByTelegramID(ctx context.Context, telegramID int64) (*User, error)
	UserByName(ctx context.Context, name string) (*User, error)
	Users(ctx context.Context, p Page) ([]*User, int, error)

	Policy(ctx context.Context, id PolicyID) (*Policy, error)
	Policies(ctx context.Context, f PolicyFilter) ([]*Policy, int, error)

	Approvals(ctx context.Context, id PermissionID) ([]Approval, error)

	AuditEvents(ctx context.Context, f AuditFilter) ([]*AuditEvent, error)
	// AuditHead returns the newest event's seq and hash as recorded at
	// commit (0 and GenesisHash when empty), so verification notices
	// events deleted from the end of the chain.
	AuditHead(ctx context.Context) (seq int64, hash string, err error)
	// ScanAudit calls fn for every event in ascending sequence order.
	ScanAudit(ctx context.Context, fn func(*AuditEvent) error) error
	AuditStats(ctx context.Context, since time.Time) (AuditStats, error)

	ConsoleSessionStore

	Ping(ctx context.Context) error
	Close() error
}

// Tx is a write transaction. Reads inside it see its own writes.
type Tx interface {
	Permission(ctx context.Context, id PermissionID) (*Permission, error)
	PermissionByIdempotencyKey(ctx context.Context, agent AgentID, key string) (*Permission, error)
	// CountPermissions is Store.CountPermissions inside the transaction:
	// it sees this batch's earlier writes, so budgets and caps checked
	// here cannot be overrun by concurrent requests.
	CountPermissions(ctx context.Context, agent AgentID, actionPattern string, since time.Time, statuses []Status) (int, error)
	// CreatePermission inserts p. A permission of the same agent with the
	// same non-empty idempotency key already stored (or written earlier in
	// this transaction) makes it return ErrConflict, write nothing and
	// leave the transaction usable: that conflict is how a retry is found.
	CreatePermission(ctx context.Context, p *Permission) error
	// UpdatePermission writes p if the stored status is still expect;
	// otherwise it returns ErrConflict and writes nothing (compare-and-set).
	UpdatePermission(ctx context.Context, p *Permission, expect Status) error
	// IssueToken sets the token hash of an approved permission whose token
	// has not been issued yet; ErrConflict when it already has one.
	IssueToken(ctx context.Context, id PermissionID, hash string, issuedAt time.Time) error
	// SpendToken atomically consumes one use: it succeeds only for the
	// given permission, agent and token hash, while the permission is
	// approved, uses remain and now is before the token's expiry. The last
	// use moves the permission to used. On failure it returns ErrConflict
	// and changes nothing.
	SpendToken(ctx context.Context, id PermissionID, agent AgentID, hash string, now time.Time) (remaining int, err error)

	AddApproval(ctx context.Context, a Approval) error
	Approvals(ctx context.Context, id PermissionID) ([]Approval, error)

	// Agent and User read inside the transaction (see its earlier writes).
	Agent(ctx context.Context, id AgentID) (*Agent, error)
	User(ctx context.Context, id UserID) (*User, error)
	CreateAgent(ctx context.Context, a *Agent) error
	UpdateAgent(ctx context.Context, a *Agent) error
	DeleteAgent(ctx context.Context, id AgentID) error
	CreateUser(ctx context.Context, u *User) error
	UpdateUser(ctx context.Context, u *User) error
	DeleteUser(ctx context.Context, id UserID) error
	UserByName(ctx context.Context, name string) (*User, error)
	CreatePolicy(ctx context.Context, p *Policy) error
	UpdatePolicy(ctx context.Context, p *Policy) error
	DeletePolicy(ctx context.Context, id PolicyID) error

	// AppendAudit assigns e.Seq, e.PrevHash and e.Hash and stores e.
	AppendAudit(ctx context.Context, e *AuditEvent) error

	ConsoleSessionTx

	// StorageUsage returns what the agent's stored permissions take: what
	// the storage quota (Options.MaxStoredBytesPerAgent) measures. It is
	// called on every request, so it must not scan the agent's rows.
	StorageUsage(ctx context.Context, agent AgentID) (StorageUsage, error)
	// PrunePermissions deletes up to limit permissions in a final state
	// (denied, expired, used, revoked) whose last change (UpdatedAt) is
	// before before, together with their approvals, and returns how many
	// it deleted. Audit events are never deleted.
	PrunePermissions(ctx context.Context, before time.Time, limit int) (int, error)
}

// AuditAppender is a Tx that can append several events at once: as
// AppendAudit on each in turn, in fewer statements. After an error some of
// them may be stored: the caller fails its update, which undoes them.
type AuditAppender interface {
	AppendAudits(ctx context.Context, events []*AuditEvent) error
}

// StorageUsage is what one agent's stored permissions take.
type StorageUsage struct {
	// Permissions counts them, in any status.
	Permissions int
	// Bytes is their size as stored: the bytes of their texts and JSON
	// objects (action, resource, scope, context, granted scope, tool
	// annotations, reasons, …) plus a fixed allowance per permission for
	// the rest of its row (512 in the SQLite store).
	Bytes int64
}

// PermissionFilter selects permissions for listing.
type PermissionFilter struct {
	AgentID AgentID
	Status  Status
	Page    Page
}

// Page is offset pagination (v0.1.1 page/limit).
type Page struct {
	Page  int // 1-based
	Limit int
}

// Normalize applies the v0.1.1 defaults (page 1, limit 20, max 100).
func (p Page) Normalize() Page {
	if p.Page < 1 {
		p.Page = 1
	}
	if p.Limit < 1 {
		p.Limit = 20
	}
	if p.Limit > 100 {
		p.Limit = 100
	}
	return p
}

// Offset returns the row offset of the page.
func (p Page) Offset() int { return (p.Page - 1) * p.Limit }
