package telegram

import (
	"bytes"
	"encoding/base64"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The message map stays bounded: the oldest messages are forgotten first,
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
	require.Len(t, bs.msgs, 2)
	for i, b := range all {
		_, byMsg := bs.byMessage(7, 100+i)
		live := i == 2 || i == 3
		require.Equal(t, live, byMsg, "message %d", i)
		require.Equal(t, live, len(bs.forPerm(b.perm, false)) == 1, "request %d", i)
	}
	require.Len(t, bs.perms, 2)
}

// A pressed message another process sent is adopted once; a known
// message keeps its entry.
func TestButtonsAdopt(t *testing.T) {
	bs := newButtons(10)
	own := bs.add("perm_a", 7)
	bs.sent(own, 100)
	bs.adopt("perm_a", 7, 100)
	bs.adopt("perm_b", 7, 100)
	got, ok := bs.byMessage(7, 100)
	require.True(t, ok)
	require.Same(t, own, got)
	require.Empty(t, bs.forPerm("perm_b", false), "a known message is not taken over")

	bs.adopt("perm_c", 7, 101)
	bs.adopt("perm_c", 7, 101)
	list := bs.forPerm("perm_c", false)
	require.Len(t, list, 1)
	got, ok = bs.byMessage(7, 101)
	require.True(t, ok)
	require.Same(t, list[0], got)
	require.Len(t, bs.order, 2)
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

// Callback data names the request and the decision under a MAC: any
// change to either, to the MAC or to the key is refused.
func TestParseData(t *testing.T) {
	key := bytes.Repeat([]byte{1}, MinButtonKeyLen)
	other := bytes.Repeat([]byte{2}, MinButtonKeyLen)
	id := agentotp.NewPermissionID()
	a, d := buttonData(key, true, id), buttonData(key, false, id)
	require.LessOrEqual(t, len(a), maxData)
	require.LessOrEqual(t, len(d), maxData)
	require.Contains(t, a, string(id))
	mac := a[len(a)-macLen:]
	flipped := []byte(mac)
	flipped[0] ^= 1
	for name, c := range map[string]struct {
		data    string
		approve bool
		ok      bool
	}{
		"approve":          {a, true, true},
		"deny":             {d, false, true},
		"flipped decision": {"d" + a[1:], false, false},
		"other request":    {"a:" + string(agentotp.NewPermissionID()) + "." + mac, false, false},
		"changed mac":      {a[:len(a)-macLen] + string(flipped), false, false},
		"truncated mac":    {a[:len(a)-1], false, false},
		"longer mac":       {a + "A", false, false},
		"no mac":           {"a:" + string(id), false, false},
		"empty id":         {buttonData(key, true, ""), false, false},
		"other key":        {buttonData(other, true, id), false, false},
		"unknown verb":     {"x" + a[1:], false, false},
		"no prefix":        {a[2:], false, false},
		"mac not base64":   {a[:len(a)-macLen] + "!!!!!!!!!!!!!!!!", false, false},
		"too long":         {"a:" + string(bytes.Repeat([]byte{'x'}, 60)) + "." + base64.RawURLEncoding.EncodeToString(make([]byte, macBytes)), false, false},
		"empty":            {"", false, false},
	} {
		t.Run(name, func(t *testing.T) {
			approve, perm, ok := parseData(key, c.data)
			require.Equal(t, c.ok, ok)
			if ok {
				require.Equal(t, c.approve, approve)
				require.Equal(t, id, perm)
			}
		})
	}
}
