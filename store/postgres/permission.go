package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
)

// The id, owner, creation time, idempotency key, callback URL and tool call
// identify the request and never change; UpdatePermission writes the
// mutable columns. Both statements derive from these lists, so argument
// order cannot drift.
var immutablePermissionColumns = []string{
	"id", "agent_id", "created_at", "idempotency_key", "callback_url",
	"tool_server", "tool_name", "tool_annotations_json", "tool_args_sha256",
}

var mutablePermissionColumns = []string{
	"action", "resource", "scope_json", "context_json",
	"status", "updated_at", "approval_expires_at",
	"decision_effect", "decision_rule", "decision_policy_version", "decision_reason", "decision_scope_json",
	"decision_token_ttl_ns", "decision_uses", "decision_use_when", "decision_approvers_json", "decision_quorum",
	"decision_event_id", "decided_by", "decided_at", "decided_reason",
	"granted_scope_json", "token_ttl_ns", "uses", "uses_remaining", "token_expires_at", "token_hash",
	"token_issued_at", "revoked_at",
}

// params returns "$from, $from+1, …" for n parameters.
func params(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(from+i))
	}
	return b.String()
}

var (
	allPermissionColumns = append(append([]string{}, immutablePermissionColumns...), mutablePermissionColumns...)
	permissionColumns    = strings.Join(allPermissionColumns, ", ")

	selectPermission = `SELECT ` + permissionColumns + ` FROM permissions`
	// selectIdempotency matches the partial index permissions_idempotency.
	selectIdempotency = selectPermission + ` WHERE agent_id = $1 AND idempotency_key = $2 AND idempotency_key <> ''`

	// A conflict on any unique key (id, idempotency key) inserts nothing
	// (and returns no row) instead of failing, so the transaction stays
	// usable and the caller may go on after ErrConflict as it can with the
	// SQLite store. The same statement reads what the trail check of a
	// token the request's approval issues needs (see SpendToken).
	insertPermissionSQL = `WITH p AS (INSERT INTO permissions (` + permissionColumns + `) VALUES (` +
		params(1, len(allPermissionColumns)) + `) ON CONFLICT DO NOTHING
		RETURNING id, status, uses_remaining, token_hash)
		SELECT ` + trailColumns + ` FROM p ` + trailLaterals

	updatePermissionSQL = func() string {
		set := make([]string, len(mutablePermissionColumns))
		for i, c := range mutablePermissionColumns {
			set[i] = c + " = $" + strconv.Itoa(i+1)
		}
		n := len(mutablePermissionColumns)
		return `UPDATE permissions SET ` + strings.Join(set, ", ") +
			` WHERE id = $` + strconv.Itoa(n+1) + ` AND status = $` + strconv.Itoa(n+2)
	}()
)

// One statement, so no interleaving can spend a use twice: PostgreSQL
// re-checks the WHERE clause against the newest row version after any
// concurrent update of the row. At exactly token_expires_at the token is
// already dead.
//
// The same statement reads what the trail check of the use event that
// follows needs (the row as spent, the permission's latest events), saving
// that check a round trip under the writer lock: nothing can come between.
//
// Only the id is compared in a form an index can serve: the other tests
// sit inside (…) IS TRUE, which no index serves and which, like the plain
// equalities, never holds for a NULL. So the generic plan PostgreSQL reuses
// for the prepared statement always finds the row by its primary key. With
// the equalities bare the planner may take the (agent_id, created_at) or
// (status, created_at) index instead, as soon as the statistics make either
// look selective, and walk every permission of the agent, or every approved
// one, on each spend (measured: it did, after a benchmark deleted its
// agents).
var spendTokenSQL = `WITH p AS (UPDATE permissions SET
	uses_remaining = uses_remaining - 1,
	status = CASE WHEN uses_remaining = 1 THEN 'used' ELSE status END,
	updated_at = $1
	WHERE id = $2 AND (agent_id = $3 AND token_hash = $4 AND status = 'approved') IS TRUE
	AND uses_remaining > 0 AND token_expires_at > $5
	RETURNING id, status, uses_remaining, token_hash)
	SELECT ` + trailColumns + ` FROM p ` + trailLaterals

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
		int64(d.TokenTTL), int64(d.Uses), d.UseWhen, approvers, int64(d.Quorum),
		string(p.DecisionEventID), p.DecidedBy, nanos(p.DecidedAt), p.DecisionReason,
		granted, int64(p.TokenTTL), int64(p.Uses), int64(p.UsesRemaining), nanos(p.TokenExpiresAt), nullString(p.TokenHash),
		nanos(p.TokenIssuedAt), nanos(p.RevokedAt),
	}, nil
}

func scanPermission(sc scanner) (*agentotp.Permission, error) {
	var (
		p                                        agentotp.Permission
		agentID, tokenHash, callbackURL          *string
		toolServer, toolName, toolHash, toolAnn  *string
		scope, pctx, dscope, approvers, granted  *string
		created, updated, approvalExp, decidedAt *int64
		tokenExp, tokenIssued, revoked           *int64
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
	p.AgentID = agentotp.AgentID(deref(agentID))
	p.TokenHash = deref(tokenHash)
	p.CallbackURL = deref(callbackURL)
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
	if toolName != nil {
		p.Tool = &agentotp.ToolCall{Server: deref(toolServer), Name: *toolName, ArgsHash: deref(toolHash)}
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
	p, err := scanPermission(s.pool.QueryRow(ctx, selectPermission+" WHERE id = $1", string(id)))
	return p, storeErr("read permission", err, permissionNotFound)
}

// Permissions lists permissions newest first, with the total that match.
func (s *Store) Permissions(ctx context.Context, f agentotp.PermissionFilter) ([]*agentotp.Permission, int, error) {
	var (
		where []string
		args  []any
	)
	if f.AgentID != "" {
		args = append(args, string(f.AgentID))
		where = append(where, "agent_id = $"+strconv.Itoa(len(args)))
	}
	if f.Status != "" {
		args = append(args, string(f.Status))
		where = append(where, "status = $"+strconv.Itoa(len(args)))
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
	n := len(args)
	err := s.snapshot(ctx, func(q querier) error {
		if err := q.QueryRow(ctx, "SELECT count(*) FROM permissions"+cond, args...).Scan(&total); err != nil {
			return err
		}
		rows, err := q.Query(ctx, selectPermission+cond+" ORDER BY created_at DESC NULLS LAST, id DESC LIMIT $"+
			strconv.Itoa(n+1)+" OFFSET $"+strconv.Itoa(n+2), append(args, page.Limit, page.Offset())...)
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
	// The status term repeats the partial index's WHERE so that it is used.
	rows, err := s.pool.Query(ctx, selectPermission+
		` WHERE status IN ('pending', 'approved') AND deadline <= $1 ORDER BY deadline, id LIMIT $2`,
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
	err := s.pool.QueryRow(ctx, q, args...).Scan(&n)
	return n, storeErr("count permissions", err)
}

// CountPermissions counts inside the transaction, which holds the writer
// lock: no other instance can add a permission between this count and
// the caller's insert.
func (t *tx) CountPermissions(_ context.Context, agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (int, error) {
	q, args := countQuery(agent, actionPattern, since, statuses)
	var n int
	err := t.scan(q, args, &n)
	return n, storeErr("count permissions", err)
}

func countQuery(agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (string, []any) {
	q := `SELECT count(*) FROM permissions WHERE agent_id = $1 AND action LIKE $2 ESCAPE '\'`
	args := []any{string(agent), likePattern(actionPattern)}
	if !since.IsZero() {
		args = append(args, since.UnixNano())
		q += " AND created_at >= $" + strconv.Itoa(len(args))
	}
	if len(statuses) > 0 {
		st := make([]string, len(statuses))
		for i, s := range statuses {
			st[i] = string(s)
		}
		args = append(args, st)
		cond := "status = ANY($" + strconv.Itoa(len(args)) + ")"
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

// likePattern turns a pattern in which only '*' is special into a LIKE
// pattern: LIKE's own metacharacters become literal.
func likePattern(p string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `*`, `%`).Replace(p)
}

// Permission reads one permission inside the transaction.
func (t *tx) Permission(_ context.Context, id agentotp.PermissionID) (*agentotp.Permission, error) {
	p, err := scanPermission(t.row(selectPermission+" WHERE id = $1", string(id)))
	return p, storeErr("read permission", err, permissionNotFound)
}

// PermissionByIdempotencyKey finds the agent's permission created with key.
func (t *tx) PermissionByIdempotencyKey(_ context.Context, agent agentotp.AgentID, key string) (*agentotp.Permission, error) {
	if key == "" {
		return nil, errNotFound("permission not found")
	}
	p, err := scanPermission(t.row(selectIdempotency, string(agent), key))
	return p, storeErr("read permission by idempotency key", err, permissionNotFound)
}

// CreatePermission inserts p.
func (t *tx) CreatePermission(_ context.Context, p *agentotp.Permission) error {
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
	r := &trailRow{id: p.ID}
	err = t.scan(insertPermissionSQL, all, r.dest()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return errConflict("permission already exists (id, idempotency key or token)")
	}
	if err != nil {
		return storeErr("create permission", err, failure{missing: "agent not found"})
	}
	t.trail = r // for AppendAudit (see follow)
	return nil
}

// UpdatePermission writes p if its stored status is still expect.
func (t *tx) UpdatePermission(_ context.Context, p *agentotp.Permission, expect agentotp.Status) error {
	args, err := permissionArgs(p)
	if err != nil {
		return agentotp.ValidationError("permission", "cannot be encoded")
	}
	tag, err := t.exec(updatePermissionSQL, append(args, string(p.ID), string(expect))...)
	if err != nil {
		return storeErr("update permission", err, failure{conflict: "token already in use by another permission"})
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if err := t.permissionExists(p.ID); err != nil {
		return err
	}
	return errConflict("permission changed concurrently")
}

func (t *tx) permissionExists(id agentotp.PermissionID) error {
	var one int
	err := t.scan("SELECT 1 FROM permissions WHERE id = $1", []any{string(id)}, &one)
	return storeErr("read permission", err, permissionNotFound)
}

// issueTokenSQL sets a token hash. The status is tested so that no index
// serves it: see spendTokenSQL.
const issueTokenSQL = `UPDATE permissions SET token_hash = $1, token_issued_at = $2, updated_at = $2
	WHERE id = $3 AND (status = 'approved') IS TRUE AND token_hash IS NULL`

// IssueToken sets the token hash of an approved permission that has none.
func (t *tx) IssueToken(_ context.Context, id agentotp.PermissionID, hash string, issuedAt time.Time) error {
	if hash == "" {
		return agentotp.ValidationError("tokenHash", "is required")
	}
	tag, err := t.exec(issueTokenSQL, hash, nanos(issuedAt), string(id))
	if err != nil {
		return storeErr("issue token", err, failure{conflict: "token already issued"})
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if err := t.permissionExists(id); err != nil {
		return err
	}
	return errConflict("token already issued or permission not approved")
}

// SpendToken consumes one use in a single conditional UPDATE.
func (t *tx) SpendToken(_ context.Context, id agentotp.PermissionID, agent agentotp.AgentID, hash string, now time.Time) (int, error) {
	r := &trailRow{id: id}
	err := t.scan(spendTokenSQL, []any{nanos(now), string(id), string(agent), hash, now.UnixNano()}, r.dest()...)
	if errors.Is(err, pgx.ErrNoRows) {
		// Wrong permission, agent or token, not approved, used up or
		// expired: the caller re-reads the row to explain which.
		return 0, errConflict("token cannot be used")
	}
	if err != nil {
		return 0, storeErr("spend token", err)
	}
	t.trail = r // for AppendAudit, if it comes next
	return r.remaining, nil
}
