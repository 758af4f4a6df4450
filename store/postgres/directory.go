package postgres

import (
	"context"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5/pgconn"
)

// Agents, users and policies: the directory the service manages.

const selectAgent = `SELECT id, name, description, metadata_json, active, key_hash, key_prefix,
	created_at, updated_at FROM agents`

func scanAgent(sc scanner) (*agentotp.Agent, error) {
	var (
		meta             *string
		created, updated *int64
		out              agentotp.Agent
	)
	if err := sc.Scan(&out.ID, &out.Name, &out.Description, &meta, &out.Active, &out.KeyHash, &out.KeyPrefix,
		&created, &updated); err != nil {
		return nil, err
	}
	m, err := decodeMap(meta)
	if err != nil {
		return nil, err
	}
	out.Metadata = m
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
	a, err := scanAgent(s.pool.QueryRow(ctx, selectAgent+" WHERE id = $1", string(id)))
	return a, storeErr("read agent", err, agentNotFound)
}

// AgentByKeyHash finds the agent holding the key with this hash.
func (s *Store) AgentByKeyHash(ctx context.Context, hash string) (*agentotp.Agent, error) {
	a, err := scanAgent(s.pool.QueryRow(ctx, selectAgent+" WHERE key_hash = $1 AND key_hash <> ''", hash))
	return a, storeErr("read agent by key", err, agentNotFound)
}

// Agents lists agents newest first.
func (s *Store) Agents(ctx context.Context, p agentotp.Page) ([]*agentotp.Agent, int, error) {
	return list(ctx, s, "agents", selectAgent, "", "created_at DESC NULLS LAST, id DESC", p, scanAgent)
}

func agentArgs(a *agentotp.Agent) ([]any, error) {
	meta, err := encodeMap(a.Metadata)
	if err != nil {
		return nil, agentotp.ValidationError("metadata", "cannot be encoded")
	}
	return []any{a.Name, a.Description, meta, a.Active, a.KeyHash, a.KeyPrefix, nanos(a.UpdatedAt)}, nil
}

func (t *tx) Agent(_ context.Context, id agentotp.AgentID) (*agentotp.Agent, error) {
	a, err := scanAgent(t.row(selectAgent+" WHERE id = $1", string(id)))
	return a, storeErr("read agent", err, agentNotFound)
}

func (t *tx) User(_ context.Context, id agentotp.UserID) (*agentotp.User, error) {
	u, err := scanUser(t.row(selectUser+" WHERE id = $1", string(id)))
	return u, storeErr("read user", err, userNotFound)
}

// inserted turns an INSERT … ON CONFLICT DO NOTHING that inserted nothing
// into the conflict: the transaction stays usable after it.
func inserted(op string, tag pgconn.CommandTag, err error, f failure) error {
	if err != nil {
		return storeErr(op, err, f)
	}
	if tag.RowsAffected() == 0 {
		return errConflict(f.conflict)
	}
	return nil
}

func (t *tx) CreateAgent(_ context.Context, a *agentotp.Agent) error {
	args, err := agentArgs(a)
	if err != nil {
		return err
	}
	tag, err := t.exec(`INSERT INTO agents (name, description, metadata_json, active, key_hash, key_prefix,
		updated_at, id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		append(args, string(a.ID), nanos(a.CreatedAt))...)
	return inserted("create agent", tag, err, agentConflict)
}

func (t *tx) UpdateAgent(_ context.Context, a *agentotp.Agent) error {
	args, err := agentArgs(a)
	if err != nil {
		return err
	}
	tag, err := t.exec(`UPDATE agents SET name = $1, description = $2, metadata_json = $3, active = $4,
		key_hash = $5, key_prefix = $6, updated_at = $7 WHERE id = $8`, append(args, string(a.ID))...)
	return oneRow("update agent", tag, err, agentNotFound, agentConflict)
}

// DeleteAgent removes the agent; its permissions stay with a NULL agent.
func (t *tx) DeleteAgent(_ context.Context, id agentotp.AgentID) error {
	tag, err := t.exec(`DELETE FROM agents WHERE id = $1`, string(id))
	return oneRow("delete agent", tag, err, agentNotFound, failure{})
}

const selectUser = `SELECT id, name, role, telegram_id, active, key_hash, key_prefix, created_at, updated_at FROM users`

func scanUser(sc scanner) (*agentotp.User, error) {
	var (
		u                agentotp.User
		created, updated *int64
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
	u, err := scanUser(s.pool.QueryRow(ctx, selectUser+" WHERE id = $1", string(id)))
	return u, storeErr("read user", err, userNotFound)
}

// UserByKeyHash finds the user holding the key with this hash.
func (s *Store) UserByKeyHash(ctx context.Context, hash string) (*agentotp.User, error) {
	u, err := scanUser(s.pool.QueryRow(ctx, selectUser+" WHERE key_hash = $1 AND key_hash <> ''", hash))
	return u, storeErr("read user by key", err, userNotFound)
}

// UserByTelegramID finds the user linked to a Telegram account.
func (s *Store) UserByTelegramID(ctx context.Context, telegramID int64) (*agentotp.User, error) {
	if telegramID == 0 {
		return nil, errNotFound("user not found")
	}
	u, err := scanUser(s.pool.QueryRow(ctx, selectUser+" WHERE telegram_id = $1 AND telegram_id <> 0", telegramID))
	return u, storeErr("read user by Telegram id", err, userNotFound)
}

const selectUserByName = selectUser + " WHERE name = $1"

// UserByName finds a user by name.
func (s *Store) UserByName(ctx context.Context, name string) (*agentotp.User, error) {
	u, err := scanUser(s.pool.QueryRow(ctx, selectUserByName, name))
	return u, storeErr("read user by name", err, userNotFound)
}

// Users lists users newest first.
func (s *Store) Users(ctx context.Context, p agentotp.Page) ([]*agentotp.User, int, error) {
	return list(ctx, s, "users", selectUser, "", "created_at DESC NULLS LAST, id DESC", p, scanUser)
}

func (t *tx) UserByName(_ context.Context, name string) (*agentotp.User, error) {
	u, err := scanUser(t.row(selectUserByName, name))
	return u, storeErr("read user by name", err, userNotFound)
}

func userArgs(u *agentotp.User) []any {
	return []any{u.Name, string(u.Role), u.TelegramID, u.Active, u.KeyHash, u.KeyPrefix, nanos(u.UpdatedAt)}
}

func (t *tx) CreateUser(_ context.Context, u *agentotp.User) error {
	tag, err := t.exec(`INSERT INTO users (name, role, telegram_id, active, key_hash, key_prefix,
		updated_at, id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		append(userArgs(u), string(u.ID), nanos(u.CreatedAt))...)
	return inserted("create user", tag, err, userConflict)
}

func (t *tx) UpdateUser(_ context.Context, u *agentotp.User) error {
	tag, err := t.exec(`UPDATE users SET name = $1, role = $2, telegram_id = $3, active = $4,
		key_hash = $5, key_prefix = $6, updated_at = $7 WHERE id = $8`, append(userArgs(u), string(u.ID))...)
	return oneRow("update user", tag, err, userNotFound, userConflict)
}

// DeleteUser removes the user; their votes stay with a NULL user.
func (t *tx) DeleteUser(_ context.Context, id agentotp.UserID) error {
	tag, err := t.exec(`DELETE FROM users WHERE id = $1`, string(id))
	return oneRow("delete user", tag, err, userNotFound, failure{})
}

const selectPolicy = `SELECT id, name, description, priority, agent_id, conditions_json, when_expr, effect,
	scope_template_json, approvers_json, quorum, token_ttl_ns, token_uses, use_when, active,
	created_at, updated_at FROM policies`

func scanPolicy(sc scanner) (*agentotp.Policy, error) {
	var (
		p                      agentotp.Policy
		conds, tmpl, approvers *string
		effect                 string
		ttl                    int64
		created, updated       *int64
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
	p, err := scanPolicy(s.pool.QueryRow(ctx, selectPolicy+" WHERE id = $1", string(id)))
	return p, storeErr("read policy", err, policyNotFound)
}

// Policies lists policies by descending priority, then name.
func (s *Store) Policies(ctx context.Context, f agentotp.PolicyFilter) ([]*agentotp.Policy, int, error) {
	where := ""
	if f.ActiveOnly {
		where = " WHERE active"
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
	return []any{p.Name, p.Description, int64(p.Priority), string(p.AgentID), conds, p.When, p.Effect.String(),
		tmpl, approvers, int64(p.Quorum), int64(p.TokenTTL), int64(p.TokenUses), p.UseWhen, p.Active, nanos(p.UpdatedAt)}, nil
}

func (t *tx) CreatePolicy(_ context.Context, p *agentotp.Policy) error {
	args, err := policyArgs(p)
	if err != nil {
		return err
	}
	tag, err := t.exec(`INSERT INTO policies (name, description, priority, agent_id, conditions_json,
		when_expr, effect, scope_template_json, approvers_json, quorum, token_ttl_ns, token_uses, use_when, active,
		updated_at, id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
		ON CONFLICT DO NOTHING`,
		append(args, string(p.ID), nanos(p.CreatedAt))...)
	return inserted("create policy", tag, err, policyConflict)
}

func (t *tx) UpdatePolicy(_ context.Context, p *agentotp.Policy) error {
	args, err := policyArgs(p)
	if err != nil {
		return err
	}
	tag, err := t.exec(`UPDATE policies SET name = $1, description = $2, priority = $3, agent_id = $4,
		conditions_json = $5, when_expr = $6, effect = $7, scope_template_json = $8, approvers_json = $9, quorum = $10,
		token_ttl_ns = $11, token_uses = $12, use_when = $13, active = $14, updated_at = $15 WHERE id = $16`,
		append(args, string(p.ID))...)
	return oneRow("update policy", tag, err, policyNotFound, policyConflict)
}

func (t *tx) DeletePolicy(_ context.Context, id agentotp.PolicyID) error {
	tag, err := t.exec(`DELETE FROM policies WHERE id = $1`, string(id))
	return oneRow("delete policy", tag, err, policyNotFound, failure{})
}

// oneRow turns an UPDATE or DELETE by id that touched no row into not-found.
func oneRow(op string, tag pgconn.CommandTag, err error, notFound, conflict failure) error {
	if err != nil {
		return storeErr(op, err, conflict)
	}
	if tag.RowsAffected() == 0 {
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
		if err := q.QueryRow(ctx, "SELECT count(*) FROM "+table+where).Scan(&total); err != nil {
			return err
		}
		rows, err := q.Query(ctx, selectQ+where+" ORDER BY "+order+" LIMIT $1 OFFSET $2", p.Limit, p.Offset())
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
