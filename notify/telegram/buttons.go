package telegram

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"sync"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"

	"github.com/agentotp/agentotp"
)

// Callback data is "a:<request id>.<mac>" (approve) or "d:<request
// id>.<mac>" (deny): 50 bytes, inside Telegram's 64. The MAC is HMAC-SHA256
// over the part before the dot, truncated to 96 bits, under
// Options.ButtonKey. Every instance sharing the database holds that key, so
// any of them can check a press without knowing who sent the message, while
// a modified client, which can send any callback data, can neither make
// data for a request it was not shown nor flip a Deny into an Approve.
const (
	approvePrefix = "a:"
	denyPrefix    = "d:"
	macBytes      = 12
	// MinButtonKeyLen is the shortest Options.ButtonKey accepted, in bytes.
	MinButtonKeyLen = 32
	// maxData is Telegram's limit on callback data.
	maxData = 64
)

var macLen = base64.RawURLEncoding.EncodedLen(macBytes)

func buttonMAC(key []byte, signed string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signed))
	return m.Sum(nil)[:macBytes]
}

// buttonData returns the callback data of one button of a request.
func buttonData(key []byte, approve bool, perm agentotp.PermissionID) string {
	signed := denyPrefix + string(perm)
	if approve {
		signed = approvePrefix + string(perm)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(buttonMAC(key, signed))
}

// parseData checks callback data and returns the decision and request it
// names; ok is false unless the MAC is the one key gives.
func parseData(key []byte, data string) (approve bool, perm agentotp.PermissionID, ok bool) {
	if len(data) > maxData {
		return false, "", false
	}
	signed, mac, found := strings.Cut(data, ".")
	if !found || len(mac) != macLen {
		return false, "", false
	}
	var id string
	switch {
	case strings.HasPrefix(signed, approvePrefix):
		approve, id = true, signed[len(approvePrefix):]
	case strings.HasPrefix(signed, denyPrefix):
		id = signed[len(denyPrefix):]
	default:
		return false, "", false
	}
	got, err := base64.RawURLEncoding.DecodeString(mac)
	if err != nil || id == "" || !hmac.Equal(got, buttonMAC(key, signed)) {
		return false, "", false
	}
	return approve, agentotp.PermissionID(id), true
}

// keyboard returns a request's buttons: Approve and Deny, or Deny alone
// when the message cannot show the request in full. The Approve data of
// such a request is then never given out.
func keyboard(key []byte, perm agentotp.PermissionID, full bool) *tgbotapi.InlineKeyboardMarkup {
	deny := tgbotapi.NewInlineKeyboardButtonData("❌ Deny", buttonData(key, false, perm))
	row := tgbotapi.NewInlineKeyboardRow(deny)
	if full {
		row = tgbotapi.NewInlineKeyboardRow(tgbotapi.NewInlineKeyboardButtonData("✅ Approve", buttonData(key, true, perm)), deny)
	}
	m := tgbotapi.NewInlineKeyboardMarkup(row)
	return &m
}

// onKeyboard reports whether m, the message Telegram says was pressed,
// carries a button with data. Telegram, not the presser, fills in m.
func onKeyboard(m *tgbotapi.Message, data string) bool {
	if m == nil || m.Chat == nil || m.ReplyMarkup == nil {
		return false
	}
	for _, row := range m.ReplyMarkup.InlineKeyboard {
		for _, b := range row {
			if b.CallbackData != nil && *b.CallbackData == data {
				return true
			}
		}
	}
	return false
}

// namesRequest reports whether m is a message without buttons that names
// perm: a request message whose buttons were removed after the presser's
// client showed them.
func namesRequest(m *tgbotapi.Message, perm agentotp.PermissionID) bool {
	return m != nil && m.Chat != nil && (m.ReplyMarkup == nil || len(m.ReplyMarkup.InlineKeyboard) == 0) &&
		strings.Contains(m.Text, string(perm))
}

// button is one message with Approve and Deny buttons for one request.
type button struct {
	perm agentotp.PermissionID
	chat int64

	// guarded by buttons.mu
	msg   int  // 0 until Telegram returned the message id
	final bool // the request is over: no more buttons on this message
	live  bool // still in the maps

	// edit orders the edits of this message; it guards shown and text.
	edit  sync.Mutex
	shown time.Time // UpdatedAt of the permission state the message shows
	text  string    // the text it shows
}

type msgKey struct {
	chat int64
	msg  int
}

// buttons holds the request messages this process knows, so that it can
// edit them when a request ends or gathers votes; presses never need it.
// It lives in memory and is bounded: beyond max entries the oldest are
// forgotten, and their messages are no longer edited by this process.
type buttons struct {
	mu    sync.Mutex
	max   int
	msgs  map[msgKey]*button
	perms map[agentotp.PermissionID][]*button
	order []*button // oldest first
}

func newButtons(limit int) *buttons {
	return &buttons{max: limit, msgs: map[msgKey]*button{}, perms: map[agentotp.PermissionID][]*button{}}
}

// add registers a message about to be sent.
func (bs *buttons) add(perm agentotp.PermissionID, chat int64) *button {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return bs.insert(&button{perm: perm, chat: chat})
}

// adopt registers a sent message (chat, msg) about perm unless it is
// known: the process that takes a press edits the pressed message like its
// own, under the same ordering, even if another process sent it.
func (bs *buttons) adopt(perm agentotp.PermissionID, chat int64, msg int) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if _, ok := bs.msgs[msgKey{chat, msg}]; ok {
		return
	}
	b := bs.insert(&button{perm: perm, chat: chat, msg: msg})
	if b.live {
		bs.msgs[msgKey{chat, msg}] = b
	}
}

// insert adds b and forgets the oldest entries beyond max; the caller holds
// mu.
func (bs *buttons) insert(b *button) *button {
	b.live = true
	bs.perms[b.perm] = append(bs.perms[b.perm], b)
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
	if !b.live {
		return
	}
	b.live = false
	if b.msg != 0 && bs.msgs[msgKey{b.chat, b.msg}] == b {
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
	if !b.live {
		return false
	}
	b.msg = msg
	bs.msgs[msgKey{b.chat, msg}] = b
	return b.final
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
