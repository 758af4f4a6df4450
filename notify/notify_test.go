package notify_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify"
)

type recorder struct {
	pending, resolved atomic.Int32
	err               error
	block             chan struct{}
}

func (r *recorder) NotifyPending(ctx context.Context, _ *agentotp.Permission, _ *agentotp.Agent) error {
	if r.block != nil {
		<-r.block
	}
	r.pending.Add(1)
	return r.err
}

func (r *recorder) NotifyResolved(context.Context, *agentotp.Permission) error {
	r.resolved.Add(1)
	return r.err
}

func TestFanoutReachesEveryNotifier(t *testing.T) {
	boom := errors.New("telegram down")
	ok, failing := &recorder{}, &recorder{err: boom}
	f := notify.Fanout{ok, failing}
	err := f.NotifyPending(context.Background(), &agentotp.Permission{}, nil)
	require.ErrorIs(t, err, boom)
	require.NoError(t, notify.Fanout{ok}.NotifyResolved(context.Background(), &agentotp.Permission{}))
	require.EqualValues(t, 2, ok.pending.Load()+failing.pending.Load())
	require.EqualValues(t, 1, ok.resolved.Load())

	// A slow notifier does not hold up the others.
	slow, fast := &recorder{block: make(chan struct{})}, &recorder{}
	done := make(chan error)
	go func() {
		done <- notify.Fanout{slow, fast}.NotifyPending(context.Background(), &agentotp.Permission{}, nil)
	}()
	require.Eventually(t, func() bool { return fast.pending.Load() == 1 }, time.Second, time.Millisecond)
	close(slow.block)
	require.NoError(t, <-done)
}

func TestLogNamesTheRequestAndTheCommand(t *testing.T) {
	var buf bytes.Buffer
	l := &notify.Log{Logger: slog.New(slog.NewTextHandler(&buf, nil)),
		Approve: func(id agentotp.PermissionID) string {
			return "./bin/agentotp approve " + string(id) + " --data ./data"
		}}
	p := &agentotp.Permission{ID: "perm_x", AgentID: "agt_1", Action: "gmail.send", Resource: "email:a@b.c",
		Context:  map[string]any{"reason": "invoice\nlevel=ERROR msg=forged " + strings.Repeat("x", 300)},
		Decision: agentotp.Decision{Rule: "ask-email"}}
	require.NoError(t, l.NotifyPending(context.Background(), p, &agentotp.Agent{Name: "mailer"}))
	out := buf.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "agent text cannot start a log line of its own: %s", out)
	for _, want := range []string{"level=INFO", `msg="approval needed"`, "id=perm_x", "agent=mailer", "action=gmail.send",
		"resource=email:a@b.c", `agent_reason="invoice\nlevel=ERROR msg=forged`, "rule=ask-email",
		`approve="./bin/agentotp approve perm_x --data ./data"`} {
		require.Contains(t, out, want)
	}
	require.Less(t, len(out), 700, "agent text is capped")
}

// The log closes what it announced: a person's request, not one the
// policy decided at once.
func TestLogResolvedOnlyForRequestsThatWaited(t *testing.T) {
	for _, tc := range []struct {
		effect agentotp.Effect
		logged bool
	}{
		{agentotp.EffectRequireApproval, true},
		{agentotp.EffectAutoApprove, false},
		{agentotp.EffectDeny, false},
	} {
		t.Run(tc.effect.String(), func(t *testing.T) {
			var buf bytes.Buffer
			l := &notify.Log{Logger: slog.New(slog.NewTextHandler(&buf, nil))}
			p := &agentotp.Permission{ID: "perm_x", Status: agentotp.StatusUsed, Decision: agentotp.Decision{Effect: tc.effect}}
			require.NoError(t, l.NotifyResolved(context.Background(), p))
			require.Equal(t, tc.logged, strings.Contains(buf.String(), "request resolved"), buf.String())
		})
	}
}
