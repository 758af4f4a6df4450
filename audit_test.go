package agentotp_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// chain builds n linked events the way a store does.
func chain(t *testing.T, n int) []*agentotp.AuditEvent {
	t.Helper()
	prev := agentotp.GenesisHash
	var out []*agentotp.AuditEvent
	for i := 1; i <= n; i++ {
		e := &agentotp.AuditEvent{Seq: int64(i), ID: agentotp.NewEventID(), Time: time.Unix(int64(i), 5).UTC(),
			Type: agentotp.EventUse, ActorType: "agent", ActorID: "agt_x", Details: map[string]any{"n": i}}
		h, err := e.ComputeHash(prev)
		require.NoError(t, err)
		e.PrevHash, e.Hash, prev = prev, h, h
		out = append(out, e)
	}
	return out
}

func verify(events []*agentotp.AuditEvent) error {
	v := agentotp.NewChainVerifier()
	for _, e := range events {
		if err := v.Next(e); err != nil {
			return err
		}
	}
	return nil
}

func TestChainVerifier(t *testing.T) {
	require.NoError(t, verify(chain(t, 5)))
	tests := []struct {
		name    string
		mutate  func([]*agentotp.AuditEvent) []*agentotp.AuditEvent
		wantSeq int64
	}{
		{"edited details", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent {
			es[2].DetailsJSON = []byte(`{"n":99}`)
			return es
		}, 3},
		{"edited actor", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent { es[1].ActorID = "agt_y"; return es }, 2},
		{"edited time", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent {
			es[3].Time = es[3].Time.Add(time.Nanosecond)
			return es
		}, 4},
		{"deleted row", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent { return append(es[:2], es[3:]...) }, 3},
		{"swapped rows", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent {
			es[1], es[2] = es[2], es[1]
			return es
		}, 2},
		{"swapped content, seq kept", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent {
			es[1].Seq, es[2].Seq = es[2].Seq, es[1].Seq
			es[1], es[2] = es[2], es[1]
			return es
		}, 2},
		{"rehashed edit without fixing successor", func(es []*agentotp.AuditEvent) []*agentotp.AuditEvent {
			es[1].DetailsJSON = []byte(`{"n":42}`)
			es[1].Hash, _ = es[1].ComputeHash(es[1].PrevHash)
			return es
		}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := chain(t, 5)
			for _, e := range events {
				require.NoError(t, e.SealDetails())
			}
			err := verify(tt.mutate(events))
			var ce *agentotp.ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.wantSeq, ce.Seq, ce.Error())
		})
	}
}
