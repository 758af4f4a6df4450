package telegram

import (
	"context"
	"fmt"
	"html"
	"strings"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"

	"github.com/agentotp/agentotp"
)

// maxListed bounds the requests one /pending posts.
const maxListed = 20

// message handles a text message: a command, or a reply to a request.
func (n *Notifier) message(ctx context.Context, m *tgbotapi.Message) {
	if m.From == nil || m.Chat == nil {
		return
	}
	if name, ok := n.command(m); ok {
		switch name {
		case "start":
			n.start(ctx, m)
		case "help":
			if n.linked(ctx, m.From) {
				n.respond(ctx, m, helpText)
			} else {
				n.respondOnce(ctx, m, helpText)
			}
		case "pending":
			n.pending(ctx, m)
		}
		return
	}
	if r := m.ReplyToMessage; r != nil && r.Chat != nil && m.Text != "" && r.Chat.ID == m.Chat.ID {
		if b, ok := n.buttons.byMessage(r.Chat.ID, r.MessageID); ok {
			n.reply(ctx, m, b.perm, false)
		} else if perm, ok := n.requestOf(r); ok {
			// A request message this process did not send (another
			// instance did, or this one before a restart): its buttons
			// name the request under the button key.
			n.reply(ctx, m, perm, true)
		}
	}
}

// linked reports whether from is linked to an active approver; a failed
// lookup counts as not.
func (n *Notifier) linked(ctx context.Context, from *tgbotapi.User) bool {
	svc := n.svc.Load()
	if svc == nil {
		return false
	}
	u, _, err := approver(ctx, svc, from)
	return err == nil && u != nil
}

// requestOf returns the request whose buttons r, a message replied to,
// carries: r must be the bot's own, and every button's data must check
// under the button key and name the same request. Telegram, not the
// replier, fills in r.
func (n *Notifier) requestOf(r *tgbotapi.Message) (agentotp.PermissionID, bool) {
	if r.From == nil || r.From.ID != n.base.Self.ID || r.ReplyMarkup == nil {
		return "", false
	}
	var perm agentotp.PermissionID
	for _, row := range r.ReplyMarkup.InlineKeyboard {
		for _, b := range row {
			if b.CallbackData == nil {
				return "", false
			}
			_, p, ok := parseData(n.key, *b.CallbackData)
			if !ok || perm != "" && p != perm {
				return "", false
			}
			perm = p
		}
	}
	return perm, perm != ""
}

// command returns the command a message starts with, lower-cased and
// without "@bot". A command needs a bot_command entity at offset 0, as
// Telegram marks them; "/pending@otherbot" is not ours. The entity is
// checked against the text here because a malformed one would make the
// library's Message.Command slice out of range.
func (n *Notifier) command(m *tgbotapi.Message) (string, bool) {
	if len(m.Entities) == 0 {
		return "", false
	}
	e := m.Entities[0]
	if e.Type != "bot_command" || e.Offset != 0 || e.Length < 2 || e.Length > len(m.Text) || m.Text[0] != '/' {
		return "", false
	}
	cmd := m.Text[1:e.Length] // commands are ASCII: UTF-16 units are bytes
	if name, bot, found := strings.Cut(cmd, "@"); found {
		if !strings.EqualFold(bot, n.Username()) {
			return "", false
		}
		cmd = name
	}
	return strings.ToLower(cmd), true
}

const helpText = `<b>agentotp approvals</b>
Requests from AI agents that need a person appear here with <b>Approve</b> and <b>Deny</b> buttons. Only Telegram accounts linked to an approver can decide; presses from others change nothing and are recorded.

To deny with a reason, reply to the request message with the reason. A plain Deny press records "denied in Telegram by" your name.

/pending – post the requests waiting now, with fresh buttons
/start – show whether your Telegram account is linked, and your Telegram id
/help – this text`

// start tells the sender whether they are linked and how to link.
func (n *Notifier) start(ctx context.Context, m *tgbotapi.Message) {
	id := m.From.ID
	link := fmt.Sprintf("An admin links you with:\n<code>agentotp users create NAME --role approver --telegram-id %d</code>", id)
	svc := n.svc.Load()
	if svc == nil {
		n.respondOnce(ctx, m, txtNotReady)
		return
	}
	u, err := svc.Store().UserByTelegramID(ctx, id)
	switch {
	case err == nil && u.Active && u.Role.CanDecide():
		n.respond(ctx, m, fmt.Sprintf("Your Telegram id is <code>%d</code>. You are linked to the %s <b>%s</b>: your Approve and Deny presses count. Send /pending to see what waits.",
			id, html.EscapeString(string(u.Role)), field(u.Name, capAgent)))
	case err == nil:
		n.respondOnce(ctx, m, fmt.Sprintf("Your Telegram id is <code>%d</code>. It is linked to <b>%s</b>, who is disabled or may not decide, so your presses change nothing.",
			id, field(u.Name, capAgent)))
	default:
		n.respondOnce(ctx, m, fmt.Sprintf("Your Telegram id is <code>%d</code>. You are <b>not linked</b> to an approver, so your presses change nothing.\n%s", id, link))
	}
}

// pending posts each waiting request, with its own buttons, to the chat
// the command came from; only for linked approvers.
func (n *Notifier) pending(ctx context.Context, m *tgbotapi.Message) {
	svc := n.svc.Load()
	if svc == nil {
		n.respondOnce(ctx, m, txtNotReady)
		return
	}
	user, _, err := approver(ctx, svc, m.From)
	if err != nil {
		n.log.Error("telegram approver lookup failed", "err", err)
		n.respondOnce(ctx, m, txtFailed)
		return
	}
	if user == nil {
		n.respondOnce(ctx, m, txtNotLinked)
		return
	}
	list, total, err := svc.ListPermissions(ctx, agentotp.Principal{User: user}, agentotp.PermissionFilter{
		Status: agentotp.StatusPending, Page: agentotp.Page{Limit: maxListed},
	})
	if err != nil {
		n.log.Error("telegram /pending failed", "err", err)
		n.respond(ctx, m, txtFailed)
		return
	}
	if len(list) == 0 {
		n.respond(ctx, m, "Nothing is waiting for approval.")
		return
	}
	head := fmt.Sprintf("%d request(s) waiting:", len(list))
	if total > len(list) {
		head = fmt.Sprintf("%d requests waiting; the newest %d follow, the rest are in the console.", total, len(list))
	}
	n.respond(ctx, m, head)
	for _, p := range list {
		if err := n.post(ctx, m.Chat.ID, p, nil); err != nil {
			n.log.Warn("telegram /pending could not post a request", "permission", p.ID, "err", err)
		}
	}
}
