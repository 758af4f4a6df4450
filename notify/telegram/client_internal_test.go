package telegram

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

// Each chat has its bucket; a full table forgets only the buckets that
// have filled up again, and refuses new chats while none has.
func TestChatLimitsBounded(t *testing.T) {
	l := newChatLimits(rate.Every(time.Second), 2, 2)
	start := time.Unix(1_000_000, 0)
	for _, step := range []struct {
		chat int64
		at   time.Duration
		want bool
	}{
		{1, 0, true},
		{1, 0, true},
		{1, 0, false},              // burst spent
		{2, 0, true},               // another chat, another bucket
		{3, 0, false},              // table full, no bucket refilled
		{1, time.Second, true},     // one token back
		{3, 2 * time.Second, true}, // chat 2 refilled and forgotten
		{2, 2 * time.Second, false},
	} {
		require.Equal(t, step.want, l.allow(step.chat, start.Add(step.at)), "chat %d at %s", step.chat, step.at)
		require.LessOrEqual(t, len(l.chats), 2)
	}
}
