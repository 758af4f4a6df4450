// Package telegramtest is a fake Telegram Bot API for tests. It speaks the
// real wire format — form-encoded POSTs to /bot<token>/<method>, answers in
// {"ok":…,"result":…} envelopes — and keeps Telegram's rules that matter to
// a bot: 64-byte callback data (400 BUTTON_DATA_INVALID), 4,096-character
// messages, HTML parse mode, long polling with offsets, webhooks with a
// secret token. Tests inject updates (presses, messages, commands) and
// failures (429 with retry_after, 5xx, dropped connections), and read back
// what the bot sent.
package telegramtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Token is the bot token the fake accepts.
const Token = "123456:AAtelegramtest-fake-bot-token-0123456789"

// User is a Telegram user as it appears on the wire.
type User struct {
	ID        int64  `json:"id"`
	IsBot     bool   `json:"is_bot"`
	FirstName string `json:"first_name"`
	Username  string `json:"username,omitempty"`
}

// Button is one inline keyboard button.
type Button struct {
	Text         string  `json:"text"`
	CallbackData *string `json:"callback_data,omitempty"`
	URL          string  `json:"url,omitempty"`
}

// Data returns the button's callback data, "" when it has none.
func (b Button) Data() string {
	if b.CallbackData == nil {
		return ""
	}
	return *b.CallbackData
}

// Message is a message in a chat, as the fake stores it.
type Message struct {
	ChatID int64
	ID     int
	From   User
	// Text is the text as sent (HTML source in HTML parse mode); Visible
	// is what a person sees.
	Text      string
	Visible   string
	ParseMode string
	Keyboard  [][]Button
	ReplyTo   int
	Edits     int
}

// Buttons returns the message's buttons in order.
func (m Message) Buttons() []Button {
	var out []Button
	for _, row := range m.Keyboard {
		out = append(out, row...)
	}
	return out
}

// Answer is an answerCallbackQuery call.
type Answer struct {
	CallbackID string
	Text       string
	ShowAlert  bool
}

// Call is one request the bot made, with the status the fake answered.
type Call struct {
	Method string
	Params url.Values
	Code   int
}

// Update is an injected update: its id, the callback query id of a press
// or the message id of a message, and its JSON as Telegram delivers it.
type Update struct {
	ID         int
	CallbackID string
	MessageID  int
	JSON       []byte
}

type key struct {
	chat int64
	id   int
}

type failure struct {
	code       int
	retryAfter int
}

// Server is the fake Bot API. Point the client at URL (the endpoint
// pattern is URL + "/bot%s/%s") with Token. Methods are safe for
// concurrent use.
type Server struct {
	URL   string
	Token string
	Bot   User

	srv    *httptest.Server
	closed chan struct{}
	once   sync.Once

	mu         sync.Mutex
	wake       chan struct{} // closed and replaced when updates are queued
	queue      []Update
	nextUpdate int
	nextQuery  int
	nextMsg    map[int64]int
	messages   map[key]*Message
	calls      []Call
	answers    []Answer
	queries    map[string]bool // callback id → answered
	fails      map[string][]failure
	webhook    url.Values
	offset     int // highest offset a getUpdates asked for
}

// New starts a fake server; it closes when the test ends.
func New(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{
		Token:      Token,
		Bot:        User{ID: 42, IsBot: true, FirstName: "agentotp", Username: "agentotp_test_bot"},
		closed:     make(chan struct{}),
		wake:       make(chan struct{}),
		nextUpdate: 1000,
		nextMsg:    map[int64]int{},
		messages:   map[key]*Message{},
		queries:    map[string]bool{},
		fails:      map[string][]failure{},
	}
	s.srv = httptest.NewServer(s)
	s.URL = s.srv.URL
	tb.Cleanup(s.Close)
	return s
}

// Close stops the server, ending any long poll at once.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.closed)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

// Fail makes the next times calls of method fail: with code and, for 429,
// parameters.retry_after; code 0 drops the connection instead.
func (s *Server) Fail(method string, times, code, retryAfter int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range times {
		s.fails[method] = append(s.fails[method], failure{code, retryAfter})
	}
}

// Heal drops the failures still queued for method ("" for all).
func (s *Server) Heal(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if method == "" {
		clear(s.fails)
		return
	}
	delete(s.fails, method)
}

// Calls returns the requests made to method ("" for all), oldest first.
func (s *Server) Calls(method string) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if method == "" || c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

// Messages returns the bot's messages in chat, oldest first.
func (s *Server) Messages(chat int64) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Message
	for k, m := range s.messages {
		if k.chat == chat && m.From.ID == s.Bot.ID {
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b Message) int { return a.ID - b.ID })
	return out
}

// Message returns one message.
func (s *Server) Message(chat int64, id int) (Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.messages[key{chat, id}]
	if !ok {
		return Message{}, false
	}
	return *m, true
}

// Answers returns the answered button presses, oldest first.
func (s *Server) Answers() []Answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.answers)
}

// Answer returns the answer to one press.
func (s *Server) Answer(callbackID string) (Answer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.answers {
		if a.CallbackID == callbackID {
			return a, true
		}
	}
	return Answer{}, false
}

// Webhook returns the registered webhook URL and secret token, "" when
// none is set.
func (s *Server) Webhook() (url, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.webhook.Get("url"), s.webhook.Get("secret_token")
}

// WebhookParams returns the parameters of the last setWebhook.
func (s *Server) WebhookParams() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.webhook
}

func chatJSON(id int64) map[string]any {
	if id < 0 {
		return map[string]any{"id": id, "type": "supergroup", "title": "approvers"}
	}
	return map[string]any{"id": id, "type": "private", "first_name": "someone"}
}

// wire renders a stored message as Telegram sends it; the caller holds mu.
func (s *Server) wire(m *Message) map[string]any {
	out := map[string]any{
		"message_id": m.ID, "date": time.Now().Unix(), "chat": chatJSON(m.ChatID),
		"from": m.From, "text": m.Visible,
	}
	if len(m.Keyboard) > 0 {
		out["reply_markup"] = map[string]any{"inline_keyboard": m.Keyboard}
	}
	if m.ReplyTo != 0 {
		if r, ok := s.messages[key{m.ChatID, m.ReplyTo}]; ok {
			// The original as it is now, buttons included, without its
			// own reply_to_message (Telegram nests one level only).
			orig := map[string]any{"message_id": r.ID, "date": time.Now().Unix(), "chat": chatJSON(r.ChatID), "from": r.From, "text": r.Visible}
			if len(r.Keyboard) > 0 {
				orig["reply_markup"] = map[string]any{"inline_keyboard": r.Keyboard}
			}
			out["reply_to_message"] = orig
		} else {
			out["reply_to_message"] = map[string]any{"message_id": m.ReplyTo, "date": time.Now().Unix(), "chat": chatJSON(m.ChatID)}
		}
	}
	return out
}

func (s *Server) update(body map[string]any) Update {
	s.nextUpdate++
	body["update_id"] = s.nextUpdate
	b, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	return Update{ID: s.nextUpdate, JSON: b}
}

// PressUpdate builds a press by from of a button with data on message
// (chat, msg). Data need not be on the message: a forged update can carry
// anything.
func (s *Server) PressUpdate(from User, chat int64, msg int, data string) Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextQuery++
	qid := fmt.Sprintf("cbq-%d", s.nextQuery)
	s.queries[qid] = false
	message := map[string]any{"message_id": msg, "date": time.Now().Unix(), "chat": chatJSON(chat)}
	if m, ok := s.messages[key{chat, msg}]; ok {
		message = s.wire(m)
	}
	u := s.update(map[string]any{"callback_query": map[string]any{
		"id": qid, "from": from, "message": message, "chat_instance": fmt.Sprintf("ci%d", chat), "data": data,
	}})
	u.CallbackID = qid
	return u
}

// TextUpdate builds a text message by from in chat, replying to message
// replyTo when non-zero. Text starting with "/" gets a bot_command entity
// over its first word, as Telegram marks commands.
func (s *Server) TextUpdate(from User, chat int64, text string, replyTo int) Update {
	return s.textUpdate(from, chat, text, replyTo, true)
}

// PlainTextUpdate is TextUpdate without entities: "/pending" typed so is
// not a command.
func (s *Server) PlainTextUpdate(from User, chat int64, text string, replyTo int) Update {
	return s.textUpdate(from, chat, text, replyTo, false)
}

func (s *Server) textUpdate(from User, chat int64, text string, replyTo int, entities bool) Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextMsg[chat]++
	m := &Message{ChatID: chat, ID: s.nextMsg[chat], From: from, Text: text, Visible: text, ReplyTo: replyTo}
	s.messages[key{chat, m.ID}] = m
	w := s.wire(m)
	if entities && strings.HasPrefix(text, "/") {
		word, _, _ := strings.Cut(text, " ")
		w["entities"] = []map[string]any{{"type": "bot_command", "offset": 0, "length": Units(word)}}
	}
	u := s.update(map[string]any{"message": w})
	u.MessageID = m.ID
	return u
}

// Queue makes updates available to getUpdates, all at once and in order.
// Queuing an update again replays it (same update_id), as long as the bot
// has not confirmed it with a higher offset.
func (s *Server) Queue(us ...Update) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, us...)
	close(s.wake)
	s.wake = make(chan struct{})
}

// Press queues a press and returns it.
func (s *Server) Press(from User, chat int64, msg int, data string) Update {
	u := s.PressUpdate(from, chat, msg, data)
	s.Queue(u)
	return u
}

// Say queues a text message (a command when it starts with "/").
func (s *Server) Say(from User, chat int64, text string) Update {
	u := s.TextUpdate(from, chat, text, 0)
	s.Queue(u)
	return u
}

// Reply queues a reply to message replyTo.
func (s *Server) Reply(from User, chat int64, replyTo int, text string) Update {
	u := s.TextUpdate(from, chat, text, replyTo)
	s.Queue(u)
	return u
}

// Confirmed reports whether the bot asked for updates after updateID,
// which it does only once it has handled the batch holding it.
func (s *Server) Confirmed(updateID int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offset > updateID
}

// Post delivers u to a webhook as Telegram does, with secret in the
// X-Telegram-Bot-Api-Secret-Token header when non-empty, and returns the
// status.
func Post(ctx context.Context, webhookURL, secret string, u Update) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, webhookURL, bytes.NewReader(u.JSON))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if secret != "" {
		req.Header.Set("X-Telegram-Bot-Api-Secret-Token", secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

type apiError struct {
	code       int
	desc       string
	retryAfter int
}

func badRequest(desc string) *apiError { return &apiError{code: 400, desc: "Bad Request: " + desc} }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
	token, method, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		s.reply(w, "", nil, nil, &apiError{code: 404, desc: "Not Found"})
		return
	}
	if token != s.Token {
		s.reply(w, method, nil, nil, &apiError{code: 401, desc: "Unauthorized"})
		return
	}
	if err := r.ParseForm(); err != nil {
		s.reply(w, method, nil, nil, badRequest("can't parse request"))
		return
	}
	p := r.Form
	s.mu.Lock()
	if f := s.fails[method]; len(f) > 0 {
		s.fails[method] = f[1:]
		s.mu.Unlock()
		if f[0].code == 0 {
			s.record(method, p, 0)
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		desc := http.StatusText(f[0].code)
		if f[0].code == 429 {
			desc = fmt.Sprintf("Too Many Requests: retry after %d", f[0].retryAfter)
		}
		s.reply(w, method, p, nil, &apiError{code: f[0].code, desc: desc, retryAfter: f[0].retryAfter})
		return
	}
	s.mu.Unlock()
	if method == "getUpdates" {
		s.getUpdates(w, r, p)
		return
	}
	s.mu.Lock()
	result, apiErr := s.handle(method, p)
	s.mu.Unlock()
	s.reply(w, method, p, result, apiErr)
}

func (s *Server) record(method string, p url.Values, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, Call{Method: method, Params: p, Code: code})
}

func (s *Server) reply(w http.ResponseWriter, method string, p url.Values, result any, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	body := map[string]any{"ok": true, "result": result}
	code := http.StatusOK
	if e != nil {
		code = e.code
		body = map[string]any{"ok": false, "error_code": e.code, "description": e.desc}
		if e.retryAfter > 0 {
			body["parameters"] = map[string]any{"retry_after": e.retryAfter}
		}
	}
	if method != "" {
		s.record(method, p, code)
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// getUpdates answers at once when updates at or after offset wait, else
// holds the request up to timeout seconds. Updates below offset are
// confirmed and dropped.
func (s *Server) getUpdates(w http.ResponseWriter, r *http.Request, p url.Values) {
	offset, _ := strconv.Atoi(p.Get("offset"))
	timeout, _ := strconv.Atoi(p.Get("timeout"))
	limit, _ := strconv.Atoi(p.Get("limit"))
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	s.mu.Lock()
	s.offset = max(s.offset, offset)
	s.mu.Unlock()
	deadline := time.NewTimer(time.Duration(timeout) * time.Second)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if s.webhook.Get("url") != "" {
			s.mu.Unlock()
			s.reply(w, "getUpdates", p, nil, &apiError{code: 409, desc: "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"})
			return
		}
		if offset > 0 {
			s.queue = slices.DeleteFunc(s.queue, func(u Update) bool { return u.ID < offset })
		}
		batch := make([]json.RawMessage, 0, limit)
		for _, u := range s.queue {
			if len(batch) == limit {
				break
			}
			batch = append(batch, u.JSON)
		}
		wake := s.wake
		s.mu.Unlock()
		if len(batch) > 0 || timeout <= 0 {
			s.reply(w, "getUpdates", p, batch, nil)
			return
		}
		select {
		case <-wake:
		case <-deadline.C:
			s.reply(w, "getUpdates", p, batch, nil)
			return
		case <-r.Context().Done():
			s.record("getUpdates", p, 499)
			return
		case <-s.closed:
			return
		}
	}
}

// handle serves every method but getUpdates; the caller holds mu.
func (s *Server) handle(method string, p url.Values) (any, *apiError) {
	switch method {
	case "getMe":
		return s.Bot, nil
	case "sendMessage":
		return s.sendMessage(p)
	case "editMessageText":
		return s.editMessageText(p)
	case "answerCallbackQuery":
		id := p.Get("callback_query_id")
		if answered, ok := s.queries[id]; !ok || answered {
			return nil, badRequest("query is too old and response timeout expired or query ID is invalid")
		}
		if Units(p.Get("text")) > 200 {
			return nil, badRequest("MESSAGE_TOO_LONG")
		}
		s.queries[id] = true
		s.answers = append(s.answers, Answer{CallbackID: id, Text: p.Get("text"), ShowAlert: p.Get("show_alert") == "true"})
		return true, nil
	case "setWebhook":
		if p.Get("url") == "" {
			return nil, badRequest("bad webhook: an HTTPS URL must be provided for webhook")
		}
		if t := p.Get("secret_token"); t != "" && !validSecret(t) {
			return nil, badRequest("secret token contains unallowed characters")
		}
		s.webhook = p
		return true, nil
	case "deleteWebhook":
		s.webhook = nil
		return true, nil
	case "getWebhookInfo":
		return map[string]any{"url": s.webhook.Get("url"), "has_custom_certificate": false, "pending_update_count": len(s.queue)}, nil
	}
	return nil, &apiError{code: 404, desc: "Not Found"}
}

func validSecret(t string) bool {
	if len(t) > 256 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// content checks text, parse mode and keyboard as Telegram does.
func content(p url.Values) (visible string, kb [][]Button, e *apiError) {
	text := p.Get("text")
	if text == "" {
		return "", nil, badRequest("message text is empty")
	}
	visible = text
	if strings.EqualFold(p.Get("parse_mode"), "HTML") {
		v, err := parseHTML(text)
		if err != nil {
			return "", nil, badRequest("can't parse entities: " + err.Error())
		}
		visible = v
	}
	if Units(visible) > 4096 {
		return "", nil, badRequest("message is too long")
	}
	if raw := p.Get("reply_markup"); raw != "" && raw != "null" {
		var mk struct {
			InlineKeyboard [][]Button `json:"inline_keyboard"`
		}
		if err := json.Unmarshal([]byte(raw), &mk); err != nil {
			return "", nil, badRequest("can't parse reply keyboard markup JSON object")
		}
		for _, row := range mk.InlineKeyboard {
			for _, b := range row {
				if b.Text == "" {
					return "", nil, badRequest("BUTTON_TEXT_INVALID")
				}
				if b.CallbackData != nil && (len(*b.CallbackData) == 0 || len(*b.CallbackData) > 64) {
					return "", nil, badRequest("BUTTON_DATA_INVALID")
				}
			}
		}
		kb = mk.InlineKeyboard
	}
	return visible, kb, nil
}

func (s *Server) sendMessage(p url.Values) (any, *apiError) {
	chat, err := strconv.ParseInt(p.Get("chat_id"), 10, 64)
	if err != nil || chat == 0 {
		return nil, badRequest("chat not found")
	}
	visible, kb, e := content(p)
	if e != nil {
		return nil, e
	}
	replyTo, _ := strconv.Atoi(p.Get("reply_to_message_id"))
	if replyTo != 0 {
		if _, ok := s.messages[key{chat, replyTo}]; !ok && p.Get("allow_sending_without_reply") != "true" {
			return nil, badRequest("message to be replied not found")
		}
	}
	s.nextMsg[chat]++
	m := &Message{ChatID: chat, ID: s.nextMsg[chat], From: s.Bot, Text: p.Get("text"), Visible: visible,
		ParseMode: p.Get("parse_mode"), Keyboard: kb, ReplyTo: replyTo}
	s.messages[key{chat, m.ID}] = m
	return s.wire(m), nil
}

func (s *Server) editMessageText(p url.Values) (any, *apiError) {
	chat, _ := strconv.ParseInt(p.Get("chat_id"), 10, 64)
	id, _ := strconv.Atoi(p.Get("message_id"))
	m, ok := s.messages[key{chat, id}]
	if !ok || m.From.ID != s.Bot.ID {
		return nil, badRequest("message to edit not found")
	}
	visible, kb, e := content(p)
	if e != nil {
		return nil, e
	}
	if p.Get("text") == m.Text && sameKeyboard(kb, m.Keyboard) {
		return nil, badRequest("message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message")
	}
	m.Text, m.Visible, m.ParseMode, m.Keyboard = p.Get("text"), visible, p.Get("parse_mode"), kb
	m.Edits++
	return s.wire(m), nil
}

func sameKeyboard(a, b [][]Button) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return bytes.Equal(x, y)
}
