package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/agentotp/agentotp"
)

// Agents, users and policies: the directory the service manages.

const selectAgent = `SELECT id, name, description, metadata_json, active, key_hash, key_prefix,
	created_at, updated_at FROM agents`

func scanAgent(sc scanner) (*agentotp.Agent, error) {
	var (
		a                sql.NullString
		active           bool
		created, updated sql.NullInt64
		out              agentotp.Agent
	)
	if err := sc.Scan(&out.ID, &out.Name, &out.Description, &a, &active, &out.KeyHash, &out.KeyPrefix,
		&created, &updated); err != nil {
		return nil, err
	}
	m, err := decodeMap(a)
	if err != nil {
		return nil, err
	}
	out.Metadata, out.Active = m, active
	out.CreatedAt, out.UpdatedAt = fromNanos(created), fromNanos(updated)
	return &out, nil
}

var (
	agentNotFound  = failure{notFound: "agent not found"}
	agentConflict  = failure{conflict: "an agent with this name or key already exists"}
	userNotFound   = failure{notFound: "user not found"}
	userConflict   = failure{conflict: "a user with this name, key or Telegram id already exists"}
	policyNotFound = failure{notFound: "policy not found"}
	policyConflict = failure{conflict: "a policy with this name already exists"}
)

// Agent reads one agent.
func (s *Store) Agent(ctx context.Context, id agentotp.AgentID) (*agentotp.Agent, error) {
	a, err := scanAgent(s.reader.QueryRowContext(ctx, selectAgent+" WHERE id = ?", string(id)))
	return a, storeErr("read agent", err, agentNotFound)
}

// AgentByKeyHash finds the agent holding the key with this hash.
func (s *Store) AgentByKeyHash(ctx context.Context, hash string) (*agentotp.Agent, error) {
	a, err := scanAgent(s.agentByKeyHash.QueryRowContext(ctx, hash))
	return a, storeErr("read agent by key", err, agentNotFound)
}

// Agents lists agents newest first.
func (s *Store) Agents(ctx context.Context, p agentotp.Page) ([]*agentotp.Agent, int, error) {
	return list(ctx, s, "agents", selectAgent, "", "created_at DESC, id DESC", p, scanAgent)
}

func agentArgs(a *agentotp.Agent) ([]any, error) {
	meta, err := encodeMap(a.Metadata)
	if err != nil {
		return nil, agentotp.ValidationError("metadata", "cannot be encoded")
	}
	return []any{a.Name, a.Description, meta, boolInt(a.Active), a.KeyHash, a.KeyPrefix, nanos(a.UpdatedAt)}, nil
}

func (t *tx) Agent(ctx context.Context, id agentotp.AgentID) (*agentotp.Agent, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	a, err := scanAgent(t.tx.QueryRowContext(ctx, selectAgent+" WHERE id = ?", string(id)))
	return a, storeErr("read agent", err, agentNotFound)
}

func (t *tx) User(ctx context.Context, id agentotp.UserID) (*agentotp.User, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	u, err := scanUser(t.tx.QueryRowContext(ctx, selectUser+" WHERE id = ?", string(id)))
	return u, storeErr("read user", err, userNotFound)
}

func (t *tx) CreateAgent(ctx context.Context, a *agentotp.Agent) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := agentArgs(a)
	if err != nil {
		return err
	}
	_, err = t.tx.ExecContext(ctx, `INSERT INTO agents (name, description, metadata_json, active, key_hash, key_prefix,
		updated_at, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, append(args, string(a.ID), nanos(a.CreatedAt))...)
	return storeErr("create agent", err, agentConflict)
}

func (t *tx) UpdateAgent(ctx context.Context, a *agentotp.Agent) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := agentArgs(a)
	if err != nil {
		return err
	}
	res, err := t.tx.ExecContext(ctx, `UPDATE agents SET name = ?, description = ?, metadata_json = ?, active = ?,
		key_hash = ?, key_prefix = ?, updated_at = ? WHERE id = ?`, append(args, string(a.ID))...)
	return oneRow("update agent", res, err, agentNotFound, agentConflict)
}

// DeleteAgent removes the agent; its permissions stay with a NULL agent.
func (t *tx) DeleteAgent(ctx context.Context, id agentotp.AgentID) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `DELETE FROM agents WHERE id = ?`, string(id))
	return oneRow("delete agent", res, err, agentNotFound, failure{})
}

const selectUser = `SELECT id, name, role, telegram_id, active, key_hash, key_prefix, created_at, updated_at FROM users`

func scanUser(sc scanner) (*agentotp.User, error) {
	var (
		u                agentotp.User
		created, updated sql.NullInt64
	)
	if err := sc.Scan(&u.ID, &u.Name, &u.Role, &u.TelegramID, &u.Active, &u.KeyHash, &u.KeyPrefix,
		&created, &updated); err != nil {
		return nil, err
	}
	u.CreatedAt, u.UpdatedAt = fromNanos(created), fromNanos(updated)
	return &u, nil
}

// User reads one user.
func (s *Store) User(ctx context.Context, id agentotp.UserID) (*agentotp.User, error) {
	u, err := scanUser(s.reader.QueryRowContext(ctx, selectUser+" WHERE id = ?", string(id)))
	return u, storeErr("read user", err, userNotFound)
}

// UserByKeyHash finds the user holding the key with this hash.
func (s *Store) UserByKeyHash(ctx context.Context, hash string) (*agentotp.User, error) {
	u, err := scanUser(s.userByKeyHash.QueryRowContext(ctx, hash))
	return u, storeErr("read user by key", err, userNotFound)
}

// UserByTelegramID finds the user linked to a Telegram account.
func (s *Store) UserByTelegramID(ctx context.Context, telegramID int64) (*agentotp.User, error) {
	if telegramID == 0 {
		return nil, errNotFound("user not found")
	}
	u, err := scanUser(s.reader.QueryRowContext(ctx, selectUser+" WHERE telegram_id = ? AND telegram_id <> 0", telegramID))
	return u, storeErr("read user by Telegram id", err, userNotFound)
}

// UserByName finds a user by name.
func (s *Store) UserByName(ctx context.Context, name string) (*agentotp.User, error) {
	return userByName(ctx, s.reader, name)
}

func userByName(ctx context.Context, q querier, name string) (*agentotp.User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, selectUser+" WHERE name = ?", name))
	return u, storeErr("read user by name", err, userNotFound)
}

// Users lists users newest first.
func (s *Store) Users(ctx context.Context, p agentotp.Page) ([]*agentotp.User, int, error) {
	return list(ctx, s, "users", selectUser, "", "created_at DESC, id DESC", p, scanUser)
}

func (t *tx) UserByName(ctx context.Context, name string) (*agentotp.User, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	return userByName(ctx, t.tx, name)
}

func userArgs(u *agentotp.User) []any {
	return []any{u.Name, string(u.Role), u.TelegramID, boolInt(u.Active), u.KeyHash, u.KeyPrefix, nanos(u.UpdatedAt)}
}

func (t *tx) CreateUser(ctx context.Context, u *agentotp.User) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	_, err := t.tx.ExecContext(ctx, `INSERT INTO users (name, role, telegram_id, active, key_hash, key_prefix,
		updated_at, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, append(userArgs(u), string(u.ID), nanos(u.CreatedAt))...)
	return storeErr("create user", err, userConflict)
}

func (t *tx) UpdateUser(ctx context.Context, u *agentotp.User) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `UPDATE users SET name = ?, role = ?, telegram_id = ?, active = ?,
		key_hash = ?, key_prefix = ?, updated_at = ? WHERE id = ?`, append(userArgs(u), string(u.ID))...)
	return oneRow("update user", res, err, userNotFound, userConflict)
}

// DeleteUser removes the user; their votes stay with a NULL user.
func (t *tx) DeleteUser(ctx context.Context, id agentotp.UserID) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, string(id))
	return oneRow("delete user", res, err, userNotFound, failure{})
}

const selectPolicy = `SELECT id, name, description, priority, agent_id, conditions_json, when_expr, effect,
	scope_template_json, approvers_json, quorum, token_ttl_ns, token_uses, use_when, active,
	created_at, updated_at FROM policies`

func scanPolicy(sc scanner) (*agentotp.Policy, error) {
	var (
		p                      agentotp.Policy
		conds, tmpl, approvers sql.NullString
		effect                 string
		ttl                    int64
		created, updated       sql.NullInt64
	)
	if err := sc.Scan(&p.ID, &p.Name, &p.Description, &p.Priority, &p.AgentID, &conds, &p.When, &effect,
		&tmpl, &approvers, &p.Quorum, &ttl, &p.TokenUses, &p.UseWhen, &p.Active, &created, &updated); err != nil {
		return nil, err
	}
	var err error
	if p.Conditions, err = decodeMap(conds); err != nil {
		return nil, err
	}
	if p.ScopeTemplate, err = decodeMap(tmpl); err != nil {
		return nil, err
	}
	if p.Approvers, err = decodeStrings(approvers); err != nil {
		return nil, err
	}
	p.Effect, _ = agentotp.ParseEffect(effect) // CHECK admits only the three spellings
	p.TokenTTL = time.Duration(ttl)
	p.CreatedAt, p.UpdatedAt = fromNanos(created), fromNanos(updated)
	return &p, nil
}

// Policy reads one API-managed policy.
func (s *Store) Policy(ctx context.Context, id agentotp.PolicyID) (*agentotp.Policy, error) {
	p, err := scanPolicy(s.reader.QueryRowContext(ctx, selectPolicy+" WHERE id = ?", string(id)))
	return p, storeErr("read policy", err, policyNotFound)
}

// Policies lists policies by descending priority, then name.
func (s *Store) Policies(ctx context.Context, f agentotp.PolicyFilter) ([]*agentotp.Policy, int, error) {
	where := ""
	if f.ActiveOnly {
		where = " WHERE active = 1"
	}
	return list(ctx, s, "policies", selectPolicy, where, "priority DESC, name, id", f.Page, scanPolicy)
}

func policyArgs(p *agentotp.Policy) ([]any, error) {
	conds, err := encodeMap(p.Conditions)
	if err != nil {
		return nil, agentotp.ValidationError("conditions", "cannot be encoded")
	}
	tmpl, err := encodeMap(p.ScopeTemplate)
	if err != nil {
		return nil, agentotp.ValidationError("scopeTemplate", "cannot be encoded")
	}
	approvers, err := encodeStrings(p.Approvers)
	if err != nil {
		return nil, agentotp.ValidationError("approvers", "cannot be encoded")
	}
	return []any{p.Name, p.Description, p.Priority, string(p.AgentID), conds, p.When, p.Effect.String(),
		tmpl, approvers, p.Quorum, int64(p.TokenTTL), p.TokenUses, p.UseWhen, boolInt(p.Active), nanos(p.UpdatedAt)}, nil
}

func (t *tx) CreatePolicy(ctx context.Context, p *agentotp.Policy) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := policyArgs(p)
	if err != nil {
		return err
	}
	_, err = t.tx.ExecContext(ctx, `INSERT INTO policies (name, description, priority, agent_id, conditions_json,
		when_expr, effect, scope_template_json, approvers_json, quorum, token_ttl_ns, token_uses, use_when, active,
		updated_at, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		append(args, string(p.ID), nanos(p.CreatedAt))...)
	return storeErr("create policy", err, policyConflict)
}

func (t *tx) UpdatePolicy(ctx context.Context, p *agentotp.Policy) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	args, err := policyArgs(p)
	if err != nil {
		return err
	}
	res, err := t.tx.ExecContext(ctx, `UPDATE policies SET name = ?, description = ?, priority = ?, agent_id = ?,
		conditions_json = ?, when_expr = ?, effect = ?, scope_template_json = ?, approvers_json = ?, quorum = ?,
		token_ttl_ns = ?, token_uses = ?, use_when = ?, active = ?, updated_at = ? WHERE id = ?`,
		append(args, string(p.ID))...)
	return oneRow("update policy", res, err, policyNotFound, policyConflict)
}

func (t *tx) DeletePolicy(ctx context.Context, id agentotp.PolicyID) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `DELETE FROM policies WHERE id = ?`, string(id))
	return oneRow("delete policy", res, err, policyNotFound, failure{})
}

// oneRow turns an UPDATE or DELETE by id that touched no row into not-found.
func oneRow(op string, res sql.Result, err error, notFound, conflict failure) error {
	if err != nil {
		return storeErr(op, err, conflict)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return storeErr(op, err)
	}
	if n == 0 {
		return errNotFound(notFound.notFound)
	}
	return nil
}

// list runs a paged listing: the count of matching rows, then one page,
// from one snapshot. All arguments but p are constants of this package.
func list[T any](ctx context.Context, s *Store, table, selectQ, where, order string, p agentotp.Page, scan func(scanner) (T, error)) ([]T, int, error) {
	var (
		out   []T
		total int
	)
	p = p.Normalize()
	err := s.snapshot(ctx, func(q querier) error {
		if err := q.QueryRowContext(ctx, "SELECT count(*) FROM "+table+where).Scan(&total); err != nil {
			return err
		}
		rows, err := q.QueryContext(ctx, selectQ+where+" ORDER BY "+order+" LIMIT ? OFFSET ?", p.Limit, p.Offset())
		if err != nil {
			return err
		}
		out, err = collect(rows, scan)
		return err
	})
	if err != nil {
		return nil, 0, storeErr("list "+table, err)
	}
	return out, total, nil
}
