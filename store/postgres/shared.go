package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// What a store shared by several instances offers besides the Store:
// wake-ups across instances (WatchPermissions) and singleton jobs (Lead).
// Each holds a connection of its own, outside the pool: LISTEN and a
// session advisory lock belong to one server session.

// notifyChannel is where the permissions trigger announces changed ids.
const notifyChannel = "agentotp_permissions"

// Reconnection backoff of the listener and the lease.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// listenKeepAlive is how long the listener waits for a notification before
// it checks, with a ping, that its connection still lives.
const listenKeepAlive = 15 * time.Second

// dedicatedConn opens a connection outside the pool, named role in
// pg_stat_activity. The server-side TCP keepalives end the session, and so
// release its locks, within about half a minute of the instance's host
// vanishing from the network.
func (s *Store) dedicatedConn(ctx context.Context, role string) (*pgx.Conn, error) {
	cfg := s.connConfig.Copy()
	cfg.RuntimeParams["application_name"] += "-" + role
	cfg.RuntimeParams["tcp_keepalives_idle"] = "10"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "5"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	c, err := pgx.ConnectConfig(ctx, cfg)
	return c, storeErr("connect "+role, err)
}

// errClosed ends what runs on its own once the store is closed.
var errClosed = &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "store is closed"}

// untilClosed returns a context that ends with ctx or when the store is
// closed, and the error to return then.
func (s *Store) untilClosed(ctx context.Context) (context.Context, func() error) {
	inner, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.writes.Closing():
			cancel()
		case <-inner.Done():
		}
	}()
	return inner, func() error {
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errClosed
	}
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// WatchPermissions calls fn with the id of every permission inserted or
// updated by any instance, as each writing transaction commits (the
// permissions_notify trigger sends them with pg_notify). When the
// listening connection is lost it reconnects with backoff and then calls
// fn("") so the caller re-reads: notifications sent meanwhile are gone.
// It returns ctx's error when ctx ends, or SERVICE_UNAVAILABLE when the
// store is closed.
func (s *Store) WatchPermissions(ctx context.Context, fn func(agentotp.PermissionID)) error {
	ctx, end := s.untilClosed(ctx)
	var (
		conn    *pgx.Conn
		lost    bool
		backoff = minBackoff
	)
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	for {
		if ctx.Err() != nil {
			return end()
		}
		if conn == nil {
			c, err := s.listen(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("postgres: cannot listen for permission changes, retrying", "err", err, "in", backoff)
				}
				sleep(ctx, backoff)
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			conn, backoff = c, minBackoff
			if lost {
				s.log.Info("postgres: listening for permission changes again")
				fn("")
			}
		}
		wait, cancel := context.WithTimeout(ctx, listenKeepAlive)
		n, err := conn.WaitForNotification(wait)
		cancel()
		switch {
		case err == nil:
			fn(agentotp.PermissionID(n.Payload))
			continue
		case ctx.Err() != nil:
			return end()
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			ping, cancel := context.WithTimeout(ctx, listenKeepAlive)
			err = conn.Ping(ping)
			cancel()
			if err == nil {
				continue
			}
		}
		if ctx.Err() != nil {
			return end()
		}
		s.log.Warn("postgres: lost the connection listening for permission changes, reconnecting", "err", err)
		closeConn(conn)
		conn, lost = nil, true
	}
}

func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	c, err := s.dedicatedConn(ctx, "listen")
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		closeConn(c)
		return nil, storeErr("listen", err)
	}
	return c, nil
}

// Lead runs fn while this process holds the lease name: a session advisory
// lock (pg_try_advisory_lock) on a connection of its own, which the server
// releases when that session ends, however the instance dies.
//
// Every retry/4 (between 10ms and 1s) it pings that connection; when a
// ping fails or times out the lock may be gone, so fn's context is
// cancelled first, fn is waited for, and only then is the connection
// dropped. A newly elected instance waits three such intervals before it
// runs fn, long enough for the previous holder, whose session ended, to
// have noticed and cancelled its fn. That holds for a holder that keeps
// running; one frozen while its session is ended (a host paused longer than
// the interval, then resumed) may still act once before it notices, so fn
// must be safe to repeat, as the expiry sweeper and a long-poller are.
//
// Lead retries every retry (default 1s) while another instance holds the
// lease or the database cannot be reached, and returns ctx's error when
// ctx ends, or SERVICE_UNAVAILABLE when the store is closed.
func (s *Store) Lead(ctx context.Context, name string, retry time.Duration, fn func(ctx context.Context)) error {
	if retry <= 0 {
		retry = time.Second
	}
	ctx, end := s.untilClosed(ctx)
	every := min(max(retry/4, 10*time.Millisecond), time.Second)
	key := s.lockKey("lease\x00" + name)
	for ctx.Err() == nil {
		conn, err := s.dedicatedConn(ctx, "lease")
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("postgres: cannot connect for the lease, retrying", "lease", name, "err", err, "in", retry)
			}
			sleep(ctx, retry)
			continue
		}
		s.holdLease(ctx, conn, name, key, retry, every, fn)
		closeConn(conn)
		sleep(ctx, retry)
	}
	return end()
}

// holdLease tries for the lock on conn every retry, and runs fn while it
// holds it. It returns when ctx ends or conn fails.
func (s *Store) holdLease(ctx context.Context, conn *pgx.Conn, name string, key int64, retry, every time.Duration, fn func(context.Context)) {
	alive := func() bool {
		pctx, cancel := context.WithTimeout(ctx, every)
		defer cancel()
		return conn.Ping(pctx) == nil
	}
	for {
		var held bool
		qctx, cancel := context.WithTimeout(ctx, retry+every)
		err := conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&held)
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				s.log.Warn("postgres: lease connection failed, reconnecting", "lease", name, "err", err)
			}
			return
		case held:
		default:
			if !sleep(ctx, retry) {
				return
			}
			continue
		}
		break
	}
	if !sleep(ctx, 3*every) || !alive() {
		return
	}
	s.log.Info("postgres: holding the lease", "lease", name)
	leadCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			fn(leadCtx)
			if !sleep(leadCtx, retry) {
				return
			}
		}
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
		case <-tick.C:
			if alive() {
				continue
			}
			if ctx.Err() == nil {
				s.log.Warn("postgres: lease connection failed: stopping, the lease may pass to another instance", "lease", name)
			}
		}
		// Cancel fn before the connection (and so the lock) is let go.
		cancel()
		<-done
		return
	}
}
