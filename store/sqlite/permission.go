package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// The id, owner, creation time, idempotency key, callback URL and tool call
// identify the request and never change; UpdatePermission writes the
// mutable columns. Both statements derive from these lists, so argument
// order cannot drift.
const immutablePermissionColumns = `id, agent_id, created_at, idempotency_key, callback_url,
	tool_server, tool_name, tool_annotations_json, tool_args_sha256`

// immutablePermissionCount is how many names immutablePermissionColumns holds.
var immutablePermissionCount = strings.Count(immutablePermissionColumns, ",") + 1

var mutablePermissionColumns = []string{
	"action", "resource", "scope_json", "context_json",
	"status", "updated_at", "approval_expires_at",
	"decision_effect", "decision_rule", "decision_policy_version", "decision_reason", "decision_scope_json",
	"decision_token_ttl_ns", "decision_uses", "decision_use_when", "decision_approvers_json", "decision_quorum",
	"decision_event_id", "decided_by", "decided_at", "decided_reason",
	"granted_scope_json", "token_ttl_ns", "uses", "uses_remaining", "token_expires_at", "token_hash",
	"token_issued_at", "revoked_at",
}

var (
	permissionColumns = immutablePermissionColumns + ", " + strings.Join(mutablePermissionColumns, ", ")

	selectPermission = `SELECT ` + permissionColumns + ` FROM permissions`
	// selectIdempotency matches the partial index permissions_idempotency.
	selectIdempotency = selectPermission + ` WHERE agent_id = ? AND idempotency_key = ? AND idempotency_key <> ''`

	insertPermissionSQL = `INSERT INTO permissions (` + permissionColumns + `) VALUES (?` +
		strings.Repeat(", ?", immutablePermissionCount-1+len(mutablePermissionColumns)) + `)`

	updatePermissionSQL = `UPDATE permissions SET ` +
		strings.Join(mutablePermissionColumns, " = ?, ") + ` = ? WHERE id = ? AND status = ?`
)

// One statement, so no interleaving can spend a use twice: the row is
// checked and decremented under SQLite's write lock. At exactly
// token_expires_at the token is already dead.
const spendTokenSQL = `UPDATE permissions SET
	uses_remaining = uses_remaining - 1,
	status = CASE WHEN uses_remaining = 1 THEN 'used' ELSE status END,
	updated_at = ?
	WHERE id = ? AND agent_id = ? AND token_hash = ? AND status = 'approved'
	AND uses_remaining > 0 AND token_expires_at > ?
	RETURNING uses_remaining`

// permissionArgs returns the values of mutablePermissionColumns, in order.
func permissionArgs(p *agentotp.Permission) ([]any, error) {
	scope, err := encodeMap(p.Scope)
	if err != nil {
		return nil, err
	}
	pctx, err := encodeMap(p.Context)
	if err != nil {
		return nil, err
	}
	dscope, err := encodeMap(p.Decision.Scope)
	if err != nil {
		return nil, err
	}
	approvers, err := encodeStrings(p.Decision.Approvers)
	if err != nil {
		return nil, err
	}
	granted, err := encodeMap(p.GrantedScope)
	if err != nil {
		return nil, err
	}
	d := p.Decision
	return []any{
		p.Action, p.Resource, scope, pctx,
		string(p.Status), nanos(p.UpdatedAt), nanos(p.ApprovalExpiresAt),
		d.Effect.String(), d.Rule, d.PolicyVersion, d.Reason, dscope,
		int64(d.TokenTTL), d.Uses, d.UseWhen, approvers, d.Quorum,
		string(p.DecisionEventID), p.DecidedBy, nanos(p.DecidedAt), p.DecisionReason,
		granted, int64(p.TokenTTL), p.Uses, p.UsesRemaining, nanos(p.TokenExpiresAt), nullString(p.TokenHash),
		nanos(p.TokenIssuedAt), nanos(p.RevokedAt),
	}, nil
}

func scanPermission(sc scanner) (*agentotp.Permission, error) {
	var (
		p                                        agentotp.Permission
		agentID, tokenHash, callbackURL          sql.NullString
		toolServer, toolName, toolHash, toolAnn  sql.NullString
		scope, pctx, dscope, approvers, granted  sql.NullString
		created, updated, approvalExp, decidedAt sql.NullInt64
		tokenExp, tokenIssued, revoked           sql.NullInt64
		effect                                   string
		decisionTTL, tokenTTL                    int64
	)
	err := sc.Scan(&p.ID, &agentID, &created, &p.IdempotencyKey, &callbackURL,
		&toolServer, &toolName, &toolAnn, &toolHash,
		&p.Action, &p.Resource, &scope, &pctx,
		&p.Status, &updated, &approvalExp,
		&effect, &p.Decision.Rule, &p.Decision.PolicyVersion, &p.Decision.Reason, &dscope,
		&decisionTTL, &p.Decision.Uses, &p.Decision.UseWhen, &approvers, &p.Decision.Quorum,
		&p.DecisionEventID, &p.DecidedBy, &decidedAt, &p.DecisionReason,
		&granted, &tokenTTL, &p.Uses, &p.UsesRemaining, &tokenExp, &tokenHash,
		&tokenIssued, &revoked)
	if err != nil {
		return nil, err
	}
	p.AgentID = agentotp.AgentID(agentID.String)
	p.TokenHash = tokenHash.String
	p.CallbackURL = callbackURL.String
	p.CreatedAt, p.UpdatedAt, p.ApprovalExpiresAt = fromNanos(created), fromNanos(updated), fromNanos(approvalExp)
	p.DecidedAt, p.TokenExpiresAt = fromNanos(decidedAt), fromNanos(tokenExp)
	p.TokenIssuedAt, p.RevokedAt = fromNanos(tokenIssued), fromNanos(revoked)
	p.Decision.TokenTTL, p.TokenTTL = time.Duration(decisionTTL), time.Duration(tokenTTL)
	var ok bool
	if p.Decision.Effect, ok = agentotp.ParseEffect(effect); !ok {
		return nil, fmt.Errorf("permission %s: unknown decision effect %q", p.ID, effect)
	}
	if p.Scope, err = decodeMap(scope); err != nil {
		return nil, err
	}
	if p.Context, err = decodeMap(pctx); err != nil {
		return nil, err
	}
	if p.Decision.Scope, err = decodeMap(dscope); err != nil {
		return nil, err
	}
	if p.Decision.Approvers, err = decodeStrings(approvers); err != nil {
		return nil, err
	}
	if p.GrantedScope, err = decodeMap(granted); err != nil {
		return nil, err
	}
	if toolName.Valid {
		p.Tool = &agentotp.ToolCall{Server: toolServer.String, Name: toolName.String, ArgsHash: toolHash.String}
		if p.Tool.Annotations, err = decodeMap(toolAnn); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// toolValues returns the values of the tool columns: all NULL without a tool
// call, so that tool_name tells whether there is one.
func toolValues(t *agentotp.ToolCall) ([]any, error) {
	if t == nil {
		return []any{nil, nil, nil, nil}, nil
	}
	ann, err := encodeMap(t.Annotations)
	if err != nil {
		return nil, err
	}
	return []any{t.Server, t.Name, ann, t.ArgsHash}, nil
}

var permissionNotFound = failure{notFound: "permission not found"}

// Permission reads one permission from the last committed state.
func (s *Store) Permission(ctx context.Context, id agentotp.PermissionID) (*agentotp.Permission, error) {
	p, err := scanPermission(s.readPermission.QueryRowContext(ctx, string(id)))
	return p, storeErr("read permission", err, permissionNotFound)
}

// Permissions lists permissions newest first, with the total that match.
func (s *Store) Permissions(ctx context.Context, f agentotp.PermissionFilter) ([]*agentotp.Permission, int, error) {
	var (
		where []string
		args  []any
	)
	if f.AgentID != "" {
		where, args = append(where, "agent_id = ?"), append(args, string(f.AgentID))
	}
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, string(f.Status))
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	var (
		list  []*agentotp.Permission
		total int
	)
	page := f.Page.Normalize()
	err := s.snapshot(ctx, func(q querier) error {
		if err := q.QueryRowContext(ctx, "SELECT count(*) FROM permissions"+cond, args...).Scan(&total); err != nil {
			return err
		}
		rows, err := q.QueryContext(ctx, selectPermission+cond+" ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
			append(args, page.Limit, page.Offset())...)
		if err != nil {
			return err
		}
		list, err = collect(rows, scanPermission)
		return err
	})
	if err != nil {
		return nil, 0, storeErr("list permissions", err)
	}
	return list, total, nil
}

// DuePermissions lists pending permissions past their approval window and
// approved ones past their token expiry, oldest deadline first.
func (s *Store) DuePermissions(ctx context.Context, now time.Time, limit int) ([]*agentotp.Permission, error) {
	if limit <= 0 {
		limit = 100
	}
	// The status term repeats the partial index's WHERE so SQLite uses it.
	rows, err := s.reader.QueryContext(ctx, selectPermission+
		` WHERE status IN ('pending', 'approved') AND deadline <= ? ORDER BY deadline, id LIMIT ?`,
		now.UnixNano(), limit)
	if err != nil {
		return nil, storeErr("list due permissions", err)
	}
	list, err := collect(rows, scanPermission)
	return list, storeErr("list due permissions", err)
}

// CountPermissions counts an agent's permissions whose action matches a
// pattern in which only '*' is special.
func (s *Store) CountPermissions(ctx context.Context, agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (int, error) {
	q, args := countQuery(agent, actionPattern, since, statuses)
	var n int
	err := s.reader.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, storeErr("count permissions", err)
}

// CountPermissions counts inside the transaction, seeing its batch's
// earlier writes.
func (t *tx) CountPermissions(ctx context.Context, agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (int, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	q, args := countQuery(agent, actionPattern, since, statuses)
	var n int
	err := t.tx.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, storeErr("count permissions", err)
}

func countQuery(agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (string, []any) {
	q := "SELECT count(*) FROM permissions WHERE agent_id = ? AND action GLOB ?"
	args := []any{string(agent), globPattern(actionPattern)}
	if !since.IsZero() {
		q, args = q+" AND created_at >= ?", append(args, since.UnixNano())
	}
	if len(statuses) > 0 {
		cond := "status IN (?" + strings.Repeat(", ?", len(statuses)-1) + ")"
		for _, st := range statuses {
			args = append(args, string(st))
		}
		if slices.Contains(statuses, agentotp.StatusUsed) {
			cond = "(" + cond + " OR " + endedAfterUse + ")"
		}
		q += " AND " + cond
	}
	return q, args
}

// endedAfterUse is a grant revoked or expired after a use was spent, which
// a count of "used" permissions includes (see agentotp.PermissionCounter).
const endedAfterUse = "status IN ('revoked', 'expired') AND token_hash IS NOT NULL AND uses_remaining < uses"

// globPattern keeps '*' as GLOB's wildcard and makes GLOB's other
// metacharacters literal by putting each in a one-character class ('['
// and '?' are the only others; ']' is literal outside a class).
func globPattern(p string) string {
	return strings.NewReplacer("[", "[[]", "?", "[?]").Replace(p)
}

// collect scans all rows and closes them.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Permission reads one permission inside the transaction.
func (t *tx) Permission(ctx context.Context, id agentotp.PermissionID) (*agentotp.Permission, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	p, err := scanPermission(t.stmt(t.s.txPermission).QueryRowContext(ctx, string(id)))
	return p, storeErr("read permission", err, permissionNotFound)
}

// PermissionByIdempotencyKey finds the agent's permission created with key.
func (t *tx) PermissionByIdempotencyKey(ctx context.Context, agent agentotp.AgentID, key string) (*agentotp.Permission, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	if key == "" {
		return nil, errNotFound("permission not found")
	}
	p, err := scanPermission(t.stmt(t.s.txIdempotency).QueryRowContext(ctx, string(agent), key))
	return p, storeErr("read permission by idempotency key", err, permissionNotFound)
}

// CreatePermission inserts p.
func (t *tx) CreatePermission(ctx context.Context, p *agentotp.Permission) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := permissionArgs(p)
	if err != nil {
		return agentotp.ValidationError("permission", "cannot be encoded")
	}
	tool, err := toolValues(p.Tool)
	if err != nil {
		return agentotp.ValidationError("permission", "cannot be encoded")
	}
	var agentID any
	if p.AgentID != "" {
		agentID = string(p.AgentID)
	}
	all := append([]any{string(p.ID), agentID, nanos(p.CreatedAt), p.IdempotencyKey, nullString(p.CallbackURL)}, tool...)
	all = append(all, args...)
	_, err = t.stmt(t.s.insertPermission).ExecContext(ctx, all...)
	if err != nil {
		return storeErr("create permission", err, failure{
			conflict: "permission already exists (id, idempotency key or token)",
			missing:  "agent not found",
		})
	}
	if t.fresh == nil {
		t.fresh = map[agentotp.PermissionID]string{}
	}
	t.fresh[p.ID] = p.TokenHash
	return nil
}

// UpdatePermission writes p if its stored status is still expect.
func (t *tx) UpdatePermission(ctx context.Context, p *agentotp.Permission, expect agentotp.Status) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := permissionArgs(p)
	if err != nil {
		return agentotp.ValidationError("permission", "cannot be encoded")
	}
	res, err := t.tx.ExecContext(ctx, updatePermissionSQL, append(args, string(p.ID), string(expect))...)
	if err != nil {
		return storeErr("update permission", err, failure{conflict: "token already in use by another permission"})
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return storeErr("update permission", err)
	}
	if err := t.permissionExists(ctx, p.ID); err != nil {
		return err
	}
	return errConflict("permission changed concurrently")
}

func (t *tx) permissionExists(ctx context.Context, id agentotp.PermissionID) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	var one int
	err := t.tx.QueryRowContext(ctx, "SELECT 1 FROM permissions WHERE id = ?", string(id)).Scan(&one)
	return storeErr("read permission", err, permissionNotFound)
}

// IssueToken sets the token hash of an approved permission that has none.
func (t *tx) IssueToken(ctx context.Context, id agentotp.PermissionID, hash string, issuedAt time.Time) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	if hash == "" {
		return agentotp.ValidationError("tokenHash", "is required")
	}
	res, err := t.tx.ExecContext(ctx, `UPDATE permissions SET token_hash = ?, token_issued_at = ?, updated_at = ?
		WHERE id = ? AND status = 'approved' AND token_hash IS NULL`,
		hash, nanos(issuedAt), nanos(issuedAt), string(id))
	if err != nil {
		return storeErr("issue token", err, failure{conflict: "token already issued"})
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return storeErr("issue token", err)
	}
	if err := t.permissionExists(ctx, id); err != nil {
		return err
	}
	return errConflict("token already issued or permission not approved")
}

// SpendToken consumes one use in a single conditional UPDATE.
func (t *tx) SpendToken(ctx context.Context, id agentotp.PermissionID, agent agentotp.AgentID, hash string, now time.Time) (int, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	var left int
	err := t.stmt(t.s.spendToken).QueryRowContext(ctx, nanos(now), string(id), string(agent), hash, now.UnixNano()).Scan(&left)
	if errors.Is(err, sql.ErrNoRows) {
		// Wrong permission, agent or token, not approved, used up or
		// expired: the caller re-reads the row to explain which.
		return 0, errConflict("token cannot be used")
	}
	if err != nil {
		return 0, storeErr("spend token", err)
	}
	return left, nil
}
