package agentotp

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
)

// DefaultMaxStoredBytesPerAgent is the default storage quota: how many bytes
// one agent's stored permissions may take (Options.MaxStoredBytesPerAgent).
// A request at the default 8 KiB caps takes about 25 KiB (its scope, context
// and granted scope), so a flooding agent stops after about 5,000 of them;
// small requests (under 1 KiB) leave room for well over 100,000. Retention
// (Prune) frees room.
const DefaultMaxStoredBytesPerAgent = 128 << 20

// requestLimits returns the object cap and the storage quota of opts, with
// defaults filled in. A cap above MaxObjectBytes is lowered to it, loudly.
func requestLimits(opts Options, log *slog.Logger) (maxObject int, maxStored int64) {
	maxObject, maxStored = opts.MaxRequestObjectBytes, opts.MaxStoredBytesPerAgent
	if maxObject <= 0 {
		maxObject = DefaultMaxRequestObjectBytes
	}
	if maxObject > MaxObjectBytes {
		log.Error("max request object size lowered to the ceiling", "configured", maxObject, "used", MaxObjectBytes)
		maxObject = MaxObjectBytes
	}
	if maxStored <= 0 {
		maxStored = DefaultMaxStoredBytesPerAgent
	}
	return maxObject, maxStored
}

// checkQuota refuses a new permission once the agent's stored permissions
// take its quota. It reads the usage through tx, inside the writer's
// transaction, so concurrent requests — from this process or another one
// on the same database — cannot overrun it (by more than the one request
// that reaches it).
func (s *Service) checkQuota(ctx context.Context, tx Tx, agent AgentID) error {
	u, err := tx.StorageUsage(ctx, agent)
	if err != nil {
		return fmt.Errorf("read storage usage: %w", err)
	}
	if u.Bytes >= s.maxStored {
		return &Error{Code: CodeRateLimited, Message: fmt.Sprintf(
			"storage quota reached: this agent's %s stored permission requests take %s of the %s it may keep; "+
				"decided ones are pruned after the retention period", groupDigits(u.Permissions), sizeText(u.Bytes), sizeText(s.maxStored)),
			Details: map[string]string{"quotaBytes": strconv.FormatInt(s.maxStored, 10)}}
	}
	return nil
}

// sizeText writes a size for people: "128.0 MiB", "39.1 KiB".
func sizeText(n int64) string {
	if n < 1<<20 {
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	}
	return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
}
