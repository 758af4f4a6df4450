package telegram

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"

	"github.com/agentotp/agentotp"
)

// What a presser is told. Telegram shows at most 200 characters.
const (
	txtNotLinked       = "You are not linked to an approver, so nothing changed. Send /start to this bot to see your Telegram id and how to get linked."
	txtInvalid         = "This button is not valid. Nothing changed. Send /pending for fresh buttons."
	txtNotReady        = "The approval service is starting. Nothing changed; try again in a moment."
	txtFailed          = "Something went wrong, so nothing was decided. Try again, or use the console."
	txtForbidden       = "You are not one of the approvers for this request. Nothing changed."
	txtAlreadyApproved = "You have already approved this request. Another approver has to approve it too."
	txtExpired         = "This request has expired. Nothing changed."
	txtRevoked         = "This request was revoked. Nothing changed."
	txtTooLong         = "This request is too long to show in full in Telegram, so it cannot be approved here. Nothing changed; decide in the console."
)

// approver returns the user a Telegram account decides as, or why it
// cannot decide. Rights are read at every press, so a user disabled while
// a request waits can no longer decide it.
func approver(ctx context.Context, svc *agentotp.Service, from *tgbotapi.User) (*agentotp.User, string, error) {
	if from == nil || from.IsBot || from.ID <= 0 {
		return nil, "telegram account is not linked to a user", nil
	}
	u, err := svc.Store().UserByTelegramID(ctx, from.ID)
	switch {
	case errors.Is(err, agentotp.ErrNotFound):
		return nil, "telegram account is not linked to a user", nil
	case err != nil:
		return nil, "", err
	case !u.Active:
		return nil, "telegram account is linked to a disabled user", nil
	case !u.Role.CanDecide():
		return nil, "telegram account is linked to a user who may not decide", nil
	}
	return u, "", nil
}

// channel marks calls made for Telegram, so the audit records the channel.
func channel(ctx context.Context) context.Context {
	return agentotp.WithChannel(ctx, agentotp.Channel{Via: "telegram"})
}

// press handles an Approve or Deny button. Only callback data whose MAC
// checks, pressed on a message about its request by an account linked to
// an active approver, reaches Decide; everything else is refused, and
// refused presses on a known request are audited.
func (n *Notifier) press(ctx context.Context, q *tgbotapi.CallbackQuery) {
	svc := n.svc.Load()
	if svc == nil {
		n.answer(ctx, q, txtNotReady, true)
		return
	}
	ctx = channel(ctx)
	approve, perm, ok := parseData(n.key, q.Data)
	// Valid data counts only on a message about its request, so data
	// copied to another of the bot's messages decides nothing.
	onButton := ok && onKeyboard(q.Message, q.Data)
	ok = onButton || ok && namesRequest(q.Message, perm)
	user, why, err := approver(ctx, svc, q.From)
	if err != nil {
		n.log.Error("telegram approver lookup failed", "err", err)
		n.answer(ctx, q, txtFailed, true)
		return
	}
	if user == nil {
		if ok {
			if err := svc.RecordUnknownDecider(ctx, "telegram", strconv.FormatInt(fromID(q.From), 10), perm, approve, why); err != nil {
				n.log.Error("telegram: audit of a refused press failed", "permission", perm, "err", err)
			}
		}
		n.log.Info("telegram press refused", "telegram_user", fromID(q.From), "why", why)
		n.answerOnce(ctx, q, txtNotLinked)
		return
	}
	if !ok {
		n.log.Info("telegram press with invalid or misplaced callback data", "user", user.Name)
		n.answer(ctx, q, txtInvalid, true)
		return
	}
	if onButton {
		// So that the outcome, votes or staleness this process learns of
		// replace the pressed message's buttons, whoever sent it.
		n.buttons.adopt(perm, q.Message.Chat.ID, q.Message.MessageID)
	}
	if approve {
		// No message offers Approve for a request it cannot show in full,
		// but one an older version sent may.
		full, err := n.approvable(ctx, svc, perm)
		switch {
		case errors.Is(err, agentotp.ErrNotFound):
			n.answer(ctx, q, txtInvalid, true)
			return
		case err != nil:
			n.log.Error("telegram: reading a pressed request failed", "permission", perm, "err", err)
			n.answer(ctx, q, txtFailed, true)
			return
		case !full:
			n.log.Info("telegram approve refused: the request cannot be shown in full", "permission", perm, "user", user.Name)
			n.answer(ctx, q, txtTooLong, true)
			// Puts the pressed message's buttons right.
			n.progress(ctx, svc, perm)
			return
		}
	}
	in := agentotp.DecideInput{Approved: approve, Reason: "approved in Telegram by " + user.Name}
	if !approve {
		in.Reason = "denied in Telegram by " + user.Name
	}
	r := n.decide(ctx, svc, user, perm, in)
	n.answer(ctx, q, r.text, r.alert)
	r.then(ctx)
}

// approvable reports whether perm may be approved in Telegram: not while
// it is pending and its message cannot show it in full. Ended requests
// pass, for Decide to explain.
func (n *Notifier) approvable(ctx context.Context, svc *agentotp.Service, perm agentotp.PermissionID) (bool, error) {
	p, _, err := svc.GetPermission(ctx, agentotp.SystemPrincipal, perm, 0)
	if err != nil {
		return false, err
	}
	if p.Status != agentotp.StatusPending {
		return true, nil
	}
	_, full := render(n.view(ctx, svc, p, nil))
	return full, nil
}

// reply handles a reply to a request message: an approver's reply denies
// the request with the reply's text as the reason. adopt says the message
// replied to is not one this process knows: once an approver replies, it
// takes the message on so that the outcome edits it.
func (n *Notifier) reply(ctx context.Context, m *tgbotapi.Message, perm agentotp.PermissionID, adopt bool) {
	svc := n.svc.Load()
	if svc == nil {
		n.respondOnce(ctx, m, txtNotReady)
		return
	}
	ctx = channel(ctx)
	user, why, err := approver(ctx, svc, m.From)
	if err != nil {
		n.log.Error("telegram approver lookup failed", "err", err)
		n.respondOnce(ctx, m, txtFailed)
		return
	}
	if user == nil {
		if err := svc.RecordUnknownDecider(ctx, "telegram", strconv.FormatInt(fromID(m.From), 10), perm, false, why); err != nil {
			n.log.Error("telegram: audit of a refused reply failed", "permission", perm, "err", err)
		}
		n.log.Info("telegram reply refused", "telegram_user", fromID(m.From), "why", why)
		n.respondOnce(ctx, m, txtNotLinked)
		return
	}
	if adopt {
		n.buttons.adopt(perm, m.ReplyToMessage.Chat.ID, m.ReplyToMessage.MessageID)
	}
	reason := denyReason(m.Text)
	if reason == "" {
		reason = "denied in Telegram by " + user.Name
	}
	r := n.decide(ctx, svc, user, perm, agentotp.DecideInput{Approved: false, Reason: reason})
	n.respond(ctx, m, r.text)
	r.then(ctx)
}

// denyReason turns a reply into a reason the Service accepts: one line of
// printable text, at most agentotp.MaxReasonLen bytes.
func denyReason(s string) string {
	s = strings.Join(strings.Fields(clean(s, false)), " ")
	for len(s) > agentotp.MaxReasonLen {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// result is what a decision attempt tells the person, and the message
// edits to make after telling them.
type result struct {
	text  string
	alert bool // a dialog rather than a toast
	after func(context.Context)
}

func (r result) then(ctx context.Context) {
	if r.after != nil {
		r.after(ctx)
	}
}

// decide asks the Service to decide as user. The Service checks the role,
// the rule's approvers, the state (compare-and-set) and distinct quorum
// votes, and audits refusals; nothing here approves on an error.
func (n *Notifier) decide(ctx context.Context, svc *agentotp.Service, user *agentotp.User, id agentotp.PermissionID, in agentotp.DecideInput) result {
	out, err := svc.Decide(ctx, agentotp.Principal{User: user}, id, in)
	switch {
	case err == nil && out.Status == agentotp.StatusPending:
		// A quorum vote that does not decide yet.
		votes, quorum := n.votes(ctx, svc, out)
		return result{text: fmt.Sprintf("Your approval is recorded: %d of %d.", votes, quorum),
			after: func(ctx context.Context) { n.progress(ctx, svc, id) }}
	case err == nil && out.Status == agentotp.StatusApproved:
		// NotifyResolved edits the messages.
		return result{text: "Approved."}
	case err == nil:
		return result{text: "Denied."}
	case errors.Is(err, agentotp.ErrConflict):
		return n.conflict(ctx, svc, user, id)
	case errors.Is(err, agentotp.ErrForbidden):
		return result{text: txtForbidden, alert: true}
	case errors.Is(err, agentotp.ErrNotFound):
		return result{text: txtInvalid, alert: true}
	}
	n.log.Error("telegram decision failed", "permission", id, "user", user.Name, "err", err)
	return result{text: txtFailed, alert: true}
}

func (n *Notifier) votes(ctx context.Context, svc *agentotp.Service, p *agentotp.Permission) (int, int) {
	count := 0
	if list, err := svc.Store().Approvals(ctx, p.ID); err == nil {
		for _, a := range list {
			if a.Approved {
				count++
			}
		}
	}
	return count, max(1, p.Decision.Quorum)
}

// conflict explains a CONFLICT from the current state. When the request
// has ended, the messages about it are brought up to date afterwards, so a
// stale button disappears.
func (n *Notifier) conflict(ctx context.Context, svc *agentotp.Service, user *agentotp.User, id agentotp.PermissionID) result {
	cur, _, err := svc.GetPermission(ctx, agentotp.SystemPrincipal, id, 0)
	if err != nil {
		return result{text: "This request was already decided. Nothing changed.", alert: true}
	}
	if cur.Status == agentotp.StatusPending {
		// The only conflict on a pending request is a second vote.
		if list, err := svc.Store().Approvals(ctx, id); err == nil && slices.ContainsFunc(list, func(a agentotp.Approval) bool {
			return a.UserID == user.ID && a.Approved
		}) {
			return result{text: txtAlreadyApproved, alert: true}
		}
		return result{text: "This request changed meanwhile. Nothing changed; try again.", alert: true}
	}
	r := result{alert: true, after: func(ctx context.Context) {
		if err := n.finish(ctx, svc, cur); err != nil {
			n.log.Warn("telegram edit after a stale press failed", "permission", id, "err", err)
		}
	}}
	switch {
	case cur.Status == agentotp.StatusExpired && (cur.DecidedBy == "" || cur.DecidedBy == "timeout"):
		r.text = txtExpired
	case cur.Status == agentotp.StatusExpired:
		r.text = "This request was already decided (approved, and the permission has expired). Nothing changed."
	case cur.Status == agentotp.StatusRevoked:
		r.text = txtRevoked
	case cur.Status == agentotp.StatusUsed:
		r.text = "This request was already decided (approved, and the permission used). Nothing changed."
	default:
		r.text = fmt.Sprintf("This request was already decided (%s). Nothing changed.", cur.Status)
	}
	return r
}

func fromID(u *tgbotapi.User) int64 {
	if u == nil {
		return 0
	}
	return u.ID
}
