package telegram

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"

	"github.com/agentotp/agentotp"
)

// NotifyPending posts the request to the chat with Approve and Deny
// buttons. Failures are retried (see Options.MaxAttempts) and returned; the
// request stays pending either way.
func (n *Notifier) NotifyPending(ctx context.Context, p *agentotp.Permission, agent *agentotp.Agent) error {
	if p == nil {
		return errors.New("telegram: notify pending: nil permission")
	}
	return n.post(ctx, n.opts.ChatID, p, agent)
}

// NotifyResolved edits every message about the request to show how it
// ended (approved and by whom, denied and why, expired, revoked) and
// removes the buttons.
func (n *Notifier) NotifyResolved(ctx context.Context, p *agentotp.Permission) error {
	if p == nil {
		return errors.New("telegram: notify resolved: nil permission")
	}
	return n.finish(ctx, n.svc.Load(), p)
}

// post sends one request message with fresh buttons to chat.
func (n *Notifier) post(ctx context.Context, chat int64, p *agentotp.Permission, agent *agentotp.Agent) error {
	svc := n.svc.Load()
	// Registered before the state check, so an end that comes while the
	// message is on its way marks it final (see sent).
	b := n.buttons.add(p.ID, chat)
	if svc != nil {
		cur, _, err := svc.GetPermission(ctx, agentotp.SystemPrincipal, p.ID, 0)
		if err == nil && cur.Status != agentotp.StatusPending {
			n.buttons.drop(b)
			return nil
		}
		if err == nil {
			p = cur
		}
	}
	text, full := render(n.view(ctx, svc, p, agent))
	id, err := n.send(ctx, chat, text, keyboard(n.key, p.ID, full), 0)
	if err != nil {
		n.buttons.drop(b)
		return fmt.Errorf("post request %s: %w", p.ID, err)
	}
	b.shown, b.text = p.UpdatedAt, text
	if n.buttons.sent(b, id) && svc != nil {
		if cur, _, err := svc.GetPermission(ctx, agentotp.SystemPrincipal, p.ID, 0); err == nil {
			return n.finish(ctx, svc, cur)
		}
	}
	return nil
}

// finish shows p's outcome on every message about it, without buttons.
func (n *Notifier) finish(ctx context.Context, svc *agentotp.Service, p *agentotp.Permission) error {
	list := n.buttons.forPerm(p.ID, true)
	if len(list) == 0 {
		return nil
	}
	text, _ := render(n.view(ctx, svc, p, nil))
	var errs []error
	for _, b := range list {
		if err := n.show(ctx, b, p.UpdatedAt, text, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// show edits b's message unless it already shows text or a newer state.
func (n *Notifier) show(ctx context.Context, b *button, version time.Time, text string, markup *tgbotapi.InlineKeyboardMarkup) error {
	b.edit.Lock()
	defer b.edit.Unlock()
	if version.Before(b.shown) || text == b.text {
		return nil
	}
	msg, _ := n.buttons.state(b)
	if err := n.edit(ctx, b.chat, msg, text, markup); err != nil {
		return fmt.Errorf("edit message about %s: %w", b.perm, err)
	}
	b.shown, b.text = version, text
	return nil
}

// progress shows a quorum's votes so far on the messages of a request that
// is still pending, with the buttons it may have. It reads the state under
// each message's edit lock, so the last edit shows the latest votes and
// never puts buttons back after the outcome.
func (n *Notifier) progress(ctx context.Context, svc *agentotp.Service, id agentotp.PermissionID) {
	for _, b := range n.buttons.forPerm(id, false) {
		func() {
			b.edit.Lock()
			defer b.edit.Unlock()
			msg, final := n.buttons.state(b)
			if final {
				return
			}
			cur, _, err := svc.GetPermission(ctx, agentotp.SystemPrincipal, id, 0)
			if err != nil || cur.Status != agentotp.StatusPending {
				return
			}
			text, full := render(n.view(ctx, svc, cur, nil))
			if err := n.edit(ctx, b.chat, msg, text, keyboard(n.key, id, full)); err != nil {
				n.log.Warn("telegram progress edit failed", "permission", id, "err", err)
				return
			}
			b.text = text
		}()
	}
}

// view gathers what a message about p shows. Without a Service it shows
// ids where names would be.
func (n *Notifier) view(ctx context.Context, svc *agentotp.Service, p *agentotp.Permission, agent *agentotp.Agent) view {
	v := view{perm: p, now: n.opts.Clock(), link: n.link(svc, p.ID), decider: p.DecidedBy}
	if agent != nil {
		v.agent = agent.Name
	}
	if svc == nil {
		if v.agent == "" {
			v.agent = string(p.AgentID)
		}
		return v
	}
	st := svc.Store()
	if v.agent == "" {
		v.agent = string(p.AgentID)
		if a, err := st.Agent(ctx, p.AgentID); err == nil {
			v.agent = a.Name
		}
	}
	if p.Status == agentotp.StatusPending && p.Decision.Quorum > 1 {
		if votes, err := st.Approvals(ctx, p.ID); err == nil {
			for _, a := range votes {
				if a.Approved {
					v.votes = append(v.votes, n.userName(ctx, svc, a.UserID))
				}
			}
		}
	}
	if id, ok := strings.CutPrefix(p.DecidedBy, "user:"); ok {
		v.decider = n.userName(ctx, svc, agentotp.UserID(id))
	}
	return v
}

func (n *Notifier) userName(ctx context.Context, svc *agentotp.Service, id agentotp.UserID) string {
	if u, err := svc.Store().User(ctx, id); err == nil {
		return u.Name
	}
	return string(id)
}

// link is the console page of a request.
func (n *Notifier) link(svc *agentotp.Service, id agentotp.PermissionID) string {
	switch {
	case n.opts.PublicURL != "":
		return strings.TrimRight(n.opts.PublicURL, "/") + "/ui/requests/" + string(id)
	case svc != nil && svc.PublicURL() != "":
		return svc.ApprovalURL(id)
	}
	return ""
}
