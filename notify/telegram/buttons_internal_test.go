package telegram

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The nonce map stays bounded: the oldest messages are forgotten first,
// dropped ones count until they leave, and every index forgets together.
func TestButtonsBounded(t *testing.T) {
	bs := newButtons(3)
	var all []*button
	for i := range 5 {
		b := bs.add(agentotp.PermissionID("perm_"+string(rune('a'+i))), 7)
		bs.sent(b, 100+i)
		all = append(all, b)
	}
	bs.drop(all[4])
	require.Len(t, bs.order, 3)
	require.Len(t, bs.nonces, 2)
	for i, b := range all {
		_, byNonce := bs.byNonce(b.nonce)
		_, byMsg := bs.byMessage(7, 100+i)
		live := i == 2 || i == 3
		require.Equal(t, live, byNonce, "nonce %d", i)
		require.Equal(t, live, byMsg, "message %d", i)
		require.Equal(t, live, len(bs.forPerm(b.perm, false)) == 1, "request %d", i)
	}
	require.Len(t, bs.perms, 2)
}

func TestRecentBounded(t *testing.T) {
	r := newRecent[int](3)
	for i := range 5 {
		require.True(t, r.first(i))
	}
	require.False(t, r.first(4))
	require.False(t, r.first(2))
	require.True(t, r.first(0), "the oldest ids are forgotten")
	require.Len(t, r.set, 3)
}

func TestParseData(t *testing.T) {
	n := newNonce()
	for _, c := range []struct {
		data    string
		approve bool
		ok      bool
	}{
		{"a:" + n, true, true},
		{"d:" + n, false, true},
		{"x:" + n, false, false},
		{"a:" + n + "x", true, false},
		{"a:" + n[1:], true, false},
		{"", false, false},
	} {
		approve, nonce, ok := parseData(c.data)
		require.Equal(t, c.ok, ok, c.data)
		if ok {
			require.Equal(t, c.approve, approve)
			require.Equal(t, n, nonce)
		}
	}
	require.LessOrEqual(t, len(approvePrefix+n), 64)
}
