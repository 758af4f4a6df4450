package otpclient_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

// sign builds an X-Agentotp-Signature header as the server does.
func sign(secret agentotp.Secret, t time.Time, body string) string {
	ts := t.Unix()
	return "t=" + strconv.FormatInt(ts, 10) + ",v1=" + agentotp.CallbackSignature(secret, ts, []byte(body))
}

func TestVerifyCallback(t *testing.T) {
	secret := agentotp.Secret("whsec_" + strings.Repeat("A", 43))
	now := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	body := `{"event":"permission.approved","eventId":"dlv_1","id":"perm_1","status":"approved","action":"gmail.send",` +
		`"resource":"email:bob","agentId":"agt_1","reason":"ok","decidedBy":"user","decidedAt":"2031-05-06T07:08:00Z",` +
		`"timestamp":"2031-05-06T07:08:01Z","future":"ignored"}`
	good := sign(secret, now, body)
	v1 := good[strings.Index(good, "v1="):]

	cases := []struct {
		name      string
		secret    agentotp.Secret
		header    string
		body      string
		at        time.Time
		tolerance time.Duration
		problem   string // "" = valid
	}{
		{name: "valid", header: good},
		{name: "valid with spaces and another scheme", header: " t=" + strconv.FormatInt(now.Unix(), 10) + ", v0=abc , " + v1},
		{name: "valid among several v1", header: good + ",v1=" + strings.Repeat("00", 32)},
		{name: "at the edge of the tolerance", header: good, at: now.Add(5 * time.Minute)},
		{name: "clock behind the sender", header: good, at: now.Add(-5 * time.Minute)},
		{name: "custom tolerance", header: good, at: now.Add(time.Hour), tolerance: 2 * time.Hour},
		{name: "tampered body", header: good, body: strings.Replace(body, "approved", "approvee", 1), problem: "does not match"},
		{name: "wrong secret", header: good, secret: "whsec_other", problem: "does not match"},
		{name: "no secret", header: good, secret: "-", problem: "no secret"},
		{name: "old timestamp", header: good, at: now.Add(5*time.Minute + time.Second), problem: "tolerance"},
		{name: "future timestamp", header: good, at: now.Add(-6 * time.Minute), problem: "tolerance"},
		{name: "timestamp swapped", header: strings.Replace(good, strconv.FormatInt(now.Unix(), 10), strconv.FormatInt(now.Unix()+1, 10), 1),
			at: now.Add(time.Second), problem: "does not match"},
		{name: "empty header", header: "", problem: "malformed"},
		{name: "no timestamp", header: v1, problem: "t= and v1="},
		{name: "no signature", header: "t=" + strconv.FormatInt(now.Unix(), 10), problem: "t= and v1="},
		{name: "two timestamps", header: good + ",t=1", problem: "malformed timestamp"},
		{name: "bad timestamp", header: "t=soon," + v1, problem: "malformed timestamp"},
		{name: "short signature", header: "t=" + strconv.FormatInt(now.Unix(), 10) + ",v1=abcd", problem: "malformed v1"},
		{name: "not hex", header: "t=" + strconv.FormatInt(now.Unix(), 10) + ",v1=" + strings.Repeat("zz", 32), problem: "malformed v1"},
		{name: "signed non-event", header: sign(secret, now, `{"hello":1}`), body: `{"hello":1}`, problem: "not a callback event"},
		{name: "signed non-JSON", header: sign(secret, now, `nope`), body: `nope`, problem: "not a callback event"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, b, at := tc.secret, tc.body, tc.at
			switch s {
			case "":
				s = secret
			case "-":
				s = ""
			}
			if b == "" {
				b = body
			}
			if at.IsZero() {
				at = now
			}
			ev, err := otpclient.VerifyCallback(s, tc.header, []byte(b), at, tc.tolerance)
			if tc.problem != "" {
				require.ErrorIs(t, err, otpclient.ErrCallbackSignature)
				require.ErrorContains(t, err, tc.problem)
				require.Nil(t, ev)
				return
			}
			require.NoError(t, err)
			require.Equal(t, &otpclient.CallbackEvent{Event: "permission.approved", EventID: "dlv_1", ID: "perm_1",
				Status: agentotp.StatusApproved, Action: "gmail.send", Resource: "email:bob", AgentID: "agt_1", Reason: "ok",
				DecidedBy: "user", DecidedAt: time.Date(2031, 5, 6, 7, 8, 0, 0, time.UTC),
				Timestamp: time.Date(2031, 5, 6, 7, 8, 1, 0, time.UTC)}, ev)
		})
	}
}

// A receiver verifies each callback against the raw body before trusting
// it, then fetches the token (when approved) with the agent's key as usual.
func ExampleVerifyCallback() {
	secret := agentotp.Secret("whsec_example") // from `agentotp agents create` or the API's callbackSecret
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read error", http.StatusBadRequest)
			return
		}
		ev, err := otpclient.VerifyCallback(secret, r.Header.Get(otpclient.CallbackSignatureHeader), body, time.Now(), 0)
		if err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		fmt.Println(ev.Event, ev.ID, ev.Reason)
		w.WriteHeader(http.StatusNoContent)
	})

	// What the server sends, signed as it signs: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
	body := `{"event":"permission.approved","eventId":"dlv_1","id":"perm_1","status":"approved","reason":"ship it"}`
	for _, s := range []agentotp.Secret{secret, "whsec_forged"} {
		ts := time.Now().Unix()
		req := httptest.NewRequest(http.MethodPost, "/agentotp", strings.NewReader(body))
		req.Header.Set(otpclient.CallbackSignatureHeader,
			fmt.Sprintf("t=%d,v1=%s", ts, agentotp.CallbackSignature(s, ts, []byte(body))))
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		fmt.Println(rec.Code)
	}
	// Output:
	// permission.approved perm_1 ship it
	// 204
	// 401
}
