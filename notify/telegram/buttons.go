package telegram

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"sync"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"

	"github.com/agentotp/agentotp"
)

// Callback data is "a:<nonce>" (approve) or "d:<nonce>" (deny): 24 bytes,
// well inside Telegram's 64. The nonce is 128 random bits naming one
// message, so neither a guessed value nor another request's id can press a
// button.
const (
	approvePrefix = "a:"
	denyPrefix    = "d:"
	nonceBytes    = 16
)

func newNonce() string {
	var b [nonceBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("telegram: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// parseData splits callback data into the decision and the nonce.
func parseData(data string) (approve bool, nonce string, ok bool) {
	switch {
	case strings.HasPrefix(data, approvePrefix):
		approve, nonce = true, data[len(approvePrefix):]
	case strings.HasPrefix(data, denyPrefix):
		nonce = data[len(denyPrefix):]
	default:
		return false, "", false
	}
	return approve, nonce, len(nonce) == base64.RawURLEncoding.EncodedLen(nonceBytes)
}

func keyboard(nonce string) *tgbotapi.InlineKeyboardMarkup {
	m := tgbotapi.NewInlineKeyboardMarkup(tgbotapi.NewInlineKeyboardRow(
		tgbotapi.NewInlineKeyboardButtonData("✅ Approve", approvePrefix+nonce),
		tgbotapi.NewInlineKeyboardButtonData("❌ Deny", denyPrefix+nonce),
	))
	return &m
}

// button is one message with Approve and Deny buttons for one request.
type button struct {
	nonce string
	perm  agentotp.PermissionID
	chat  int64

	// guarded by buttons.mu
	msg   int  // 0 until Telegram returned the message id
	final bool // the request is over: no more buttons on this message

	// edit orders the edits of this message; it guards shown and text.
	edit  sync.Mutex
	shown time.Time // UpdatedAt of the permission state the message shows
	text  string    // the text it shows
}

type msgKey struct {
	chat int64
	msg  int
}

// buttons maps nonces and messages to requests, in memory and bounded:
// beyond max entries the oldest are forgotten.
type buttons struct {
	mu     sync.Mutex
	max    int
	nonces map[string]*button
	msgs   map[msgKey]*button
	perms  map[agentotp.PermissionID][]*button
	order  []*button // oldest first
}

func newButtons(limit int) *buttons {
	return &buttons{max: limit, nonces: map[string]*button{}, msgs: map[msgKey]*button{}, perms: map[agentotp.PermissionID][]*button{}}
}

// add registers a message about to be sent.
func (bs *buttons) add(perm agentotp.PermissionID, chat int64) *button {
	b := &button{nonce: newNonce(), perm: perm, chat: chat}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.nonces[b.nonce] = b
	bs.perms[perm] = append(bs.perms[perm], b)
	bs.order = append(bs.order, b)
	// order also holds dropped messages until they reach its front, so it
	// is what is bounded; the live entries are a subset of it.
	for len(bs.order) > bs.max {
		old := bs.order[0]
		bs.order[0] = nil
		bs.order = bs.order[1:]
		bs.forget(old)
	}
	return b
}

// forget removes b from the maps; the caller holds mu.
func (bs *buttons) forget(b *button) {
	if bs.nonces[b.nonce] != b {
		return
	}
	delete(bs.nonces, b.nonce)
	if b.msg != 0 {
		delete(bs.msgs, msgKey{b.chat, b.msg})
	}
	list := bs.perms[b.perm]
	for i, x := range list {
		if x == b {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(bs.perms, b.perm)
	} else {
		bs.perms[b.perm] = list
	}
}

// drop forgets a message that was never sent.
func (bs *buttons) drop(b *button) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.forget(b)
}

// sent records the message id and reports whether the request ended while
// the message was on its way (then the caller shows the outcome).
func (bs *buttons) sent(b *button, msg int) (final bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.nonces[b.nonce] != b {
		return false
	}
	b.msg = msg
	bs.msgs[msgKey{b.chat, msg}] = b
	return b.final
}

// byNonce returns the message a nonce belongs to.
func (bs *buttons) byNonce(nonce string) (*button, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.nonces[nonce]
	return b, ok
}

// byMessage returns the request message at (chat, msg).
func (bs *buttons) byMessage(chat int64, msg int) (*button, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.msgs[msgKey{chat, msg}]
	return b, ok
}

// state returns b's message id and whether the request ended.
func (bs *buttons) state(b *button) (msg int, final bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return b.msg, b.final
}

// forPerm returns the sent messages of a request; with end it first marks
// all of them (sent or not) final, so no later edit puts buttons back.
func (bs *buttons) forPerm(perm agentotp.PermissionID, end bool) []*button {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var out []*button
	for _, b := range bs.perms[perm] {
		if end {
			b.final = true
		}
		if b.msg != 0 {
			out = append(out, b)
		}
	}
	return out
}

// recent remembers the last max keys, to ignore repeated updates and
// presses.
type recent[K comparable] struct {
	mu   sync.Mutex
	set  map[K]struct{}
	ring []K
	next int
}

func newRecent[K comparable](limit int) *recent[K] {
	return &recent[K]{set: make(map[K]struct{}, limit), ring: make([]K, 0, limit)}
}

// first records k and reports whether it is new.
func (r *recent[K]) first(k K) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.set[k]; dup {
		return false
	}
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, k)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = k
		r.next = (r.next + 1) % len(r.ring)
	}
	r.set[k] = struct{}{}
	return true
}
