package agentotp_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func testKey(t *testing.T, fill byte) *agentotp.AuditKey {
	t.Helper()
	k, err := agentotp.NewAuditKey(bytes.Repeat([]byte{fill}, 32))
	require.NoError(t, err)
	return k
}

func TestAuditKey(t *testing.T) {
	_, err := agentotp.NewAuditKey(make([]byte, 31))
	require.ErrorContains(t, err, "at least 32 bytes")

	k := testKey(t, 7)
	require.Len(t, k.ID(), 16)
	require.Equal(t, k.ID(), testKey(t, 7).ID(), "the id is stable")
	require.NotEqual(t, k.ID(), testKey(t, 8).ID())

	// The key never prints.
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "key", k)
	j, err := json.Marshal(map[string]any{"key": k})
	require.NoError(t, err)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %x %s %q", k, k, k, k, k, k), string(j), logged.String()} {
		require.NotContains(t, s, "0707")
		require.Contains(t, s, "[redacted]")
	}

	// MACs are domain-separated and keyed.
	e := &agentotp.AuditEvent{Hash: strings.Repeat("a", 64)}
	e.MAC = k.EventMAC(e)
	require.True(t, k.VerifyEvent(e))
	require.False(t, testKey(t, 8).VerifyEvent(e))
	require.NotEqual(t, k.HeadMAC(1, e.Hash), k.EventMAC(e))
	require.True(t, k.VerifyHead(1, e.Hash, k.HeadMAC(1, e.Hash)))
	require.False(t, k.VerifyHead(2, e.Hash, k.HeadMAC(1, e.Hash)))
	require.True(t, k.VerifyTokenRef("h", k.TokenRef("h")))
	require.False(t, k.VerifyTokenRef("h2", k.TokenRef("h")))
}

func TestCheckpoint(t *testing.T) {
	k := testKey(t, 1)
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	cp := k.SignCheckpoint(agentotp.Checkpoint{Seq: 1234, Hash: strings.Repeat("ab", 32), At: at})
	line := cp.String()
	require.Regexp(t, `^agentotp-checkpoint v1 seq=1234 hash=(ab){32} at=2026-12-01T10:00:00Z key=[0-9a-f]{16} sig=[0-9a-f]{64}$`, line)

	for name, text := range map[string]string{
		"the line":         line,
		"with spaces":      "  " + line + "\n",
		"a file of them":   k.SignCheckpoint(agentotp.Checkpoint{Seq: 1, Hash: cp.Hash, At: at}).String() + "\n" + line + "\n",
		"a text log line":  `time=2026-12-01T10:00:00Z level=INFO msg="audit head" seq=1234 checkpoint="` + line + `"`,
		"a JSON log line":  `{"msg":"audit head","checkpoint":"` + line + `"}`,
		"a CRLF file line": line + "\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := agentotp.ParseCheckpoint(text)
			require.NoError(t, err)
			require.Equal(t, cp, got)
			require.NoError(t, k.CheckCheckpoint(got))
		})
	}

	forged := strings.Replace(line, "seq=1234", "seq=1000", 1)
	got, err := agentotp.ParseCheckpoint(forged)
	require.NoError(t, err, "well formed")
	require.ErrorIs(t, k.CheckCheckpoint(got), agentotp.ErrCheckpointSignature)
	other := testKey(t, 2)
	err = other.CheckCheckpoint(cp)
	require.ErrorIs(t, err, agentotp.ErrCheckpointSignature)
	require.ErrorContains(t, err, "it names key "+k.ID()+", this key is "+other.ID())

	for _, bad := range []string{"", "seq=1 hash=x", "agentotp-checkpoint v1 seq=1", strings.Replace(line, "Z key", "+00:00 key", 1),
		strings.Replace(line, "seq=1234", "seq=01234", 1)} {
		_, err := agentotp.ParseCheckpoint(bad)
		require.ErrorIs(t, err, agentotp.ErrValidation, bad)
	}
}

// keyedChain builds n linked, keyed events the way a store does.
func keyedChain(t *testing.T, k *agentotp.AuditKey, n int) []*agentotp.AuditEvent {
	t.Helper()
	events := chain(t, n)
	for _, e := range events {
		e.MAC = k.EventMAC(e)
	}
	return events
}

func TestKeyedChainVerifier(t *testing.T) {
	k := testKey(t, 3)
	verifyWith := func(key *agentotp.AuditKey, events []*agentotp.AuditEvent) (*agentotp.ChainVerifier, error) {
		v := agentotp.NewKeyedChainVerifier(key)
		for _, e := range events {
			if err := v.Next(e); err != nil {
				return v, err
			}
		}
		return v, nil
	}
	v, err := verifyWith(k, keyedChain(t, k, 5))
	require.NoError(t, err)
	require.Equal(t, int64(1), v.KeyedFrom)
	require.Zero(t, v.Unkeyed)

	// Events from before the key existed are checked by hash, and counted,
	// when an audit_keyed event adopts them.
	adopted := func(marker bool, unkeyed int) []*agentotp.AuditEvent {
		events := chain(t, 5)
		if marker {
			events[2].Type, events[2].DetailsJSON = agentotp.EventAuditKeyed, fmt.Appendf(nil, `{"unkeyedEvents":%d}`, unkeyed)
			prev := events[1].Hash
			for _, e := range events[2:] {
				e.PrevHash = prev
				e.Hash, _ = e.ComputeHash(prev)
				prev = e.Hash
			}
		}
		for _, e := range events[2:] {
			e.MAC = k.EventMAC(e)
		}
		return events
	}
	v, err = verifyWith(k, adopted(true, 2))
	require.NoError(t, err)
	require.Equal(t, int64(3), v.KeyedFrom)
	require.Equal(t, int64(2), v.Unkeyed)
	// Without one, or one that does not count them all, the events before
	// lost their MACs.
	for _, events := range [][]*agentotp.AuditEvent{adopted(false, 0), adopted(true, 1)} {
		_, err = verifyWith(k, events)
		var ce *agentotp.ChainError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, int64(2), ce.Seq)
		require.Contains(t, ce.Reason, "no audit_keyed event adopts the events before it")
	}

	tests := []struct {
		name    string
		key     *agentotp.AuditKey
		mutate  func([]*agentotp.AuditEvent)
		wantSeq int64
		reason  string
	}{
		{"recomputed after an edit", k, func(es []*agentotp.AuditEvent) {
			es[2].DetailsJSON = []byte(`{"n":42}`)
			prev := es[1].Hash
			for _, e := range es[2:] {
				e.PrevHash = prev
				e.Hash, _ = e.ComputeHash(prev)
				prev = e.Hash
			}
		}, 3, "MAC does not match"},
		{"MAC removed", k, func(es []*agentotp.AuditEvent) { es[3].MAC = "" }, 4, "MAC removed"},
		{"token ref changed", k, func(es []*agentotp.AuditEvent) { es[1].TokenRef = "x" }, 2, "MAC does not match"},
		{"wrong key", testKey(t, 4), func([]*agentotp.AuditEvent) {}, 1, "wrong audit key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := keyedChain(t, k, 5)
			tt.mutate(events)
			_, err := verifyWith(tt.key, events)
			var ce *agentotp.ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.wantSeq, ce.Seq, ce.Error())
			require.Contains(t, ce.Reason, tt.reason)
		})
	}
	// The plain verifier ignores MACs, as before.
	events := keyedChain(t, k, 3)
	events[1].MAC = "x"
	require.NoError(t, verify(events))
}

func TestAuditKeyDerive(t *testing.T) {
	a, err := agentotp.NewAuditKey(bytes.Repeat([]byte{1}, 32))
	require.NoError(t, err)
	b, err := agentotp.NewAuditKey(bytes.Repeat([]byte{2}, 32))
	require.NoError(t, err)
	require.Len(t, a.Derive("x"), 32)
	require.Equal(t, a.Derive("x"), a.Derive("x"), "every holder derives the same")
	require.NotEqual(t, a.Derive("x"), a.Derive("y"), "one key per purpose")
	require.NotEqual(t, a.Derive("x"), b.Derive("x"), "another audit key, another derived key")
}
