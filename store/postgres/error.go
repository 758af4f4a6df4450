package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// failure says what a driver error means for one operation. Each message is
// shown to clients, so it names the kind of thing, never the SQL.
type failure struct {
	notFound string // pgx.ErrNoRows
	conflict string // unique violation
	missing  string // foreign key violation: a referenced row is absent
}

// storeErr translates err by value and SQLSTATE: domain errors pass
// through, known conditions become *agentotp.Error with a safe message (the
// cause kept for the log), anything else is wrapped with op (an
// INTERNAL_ERROR to clients).
func storeErr(op string, err error, f ...failure) error {
	if err == nil {
		return nil
	}
	var de *agentotp.Error
	if errors.As(err, &de) {
		return err
	}
	var m failure
	if len(f) > 0 {
		m = f[0]
	}
	if errors.Is(err, pgx.ErrNoRows) && m.notFound != "" {
		return &agentotp.Error{Code: agentotp.CodeNotFound, Message: m.notFound}
	}
	wrapped := fmt.Errorf("%s: %w", op, err)
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		// No server, no such database, refused credentials: the operator's
		// to fix. The cause names host, user and database, never a password.
		return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "storage unavailable, try again later", Err: wrapped}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505": // unique_violation
			if m.conflict != "" {
				return &agentotp.Error{Code: agentotp.CodeConflict, Message: m.conflict, Err: wrapped}
			}
		case pe.Code == "23503": // foreign_key_violation
			if m.missing != "" {
				return &agentotp.Error{Code: agentotp.CodeNotFound, Message: m.missing, Err: wrapped}
			}
		case pe.Code == "23514", pe.Code == "23502": // check_violation, not_null_violation
			return &agentotp.Error{Code: agentotp.CodeValidation, Message: "value out of range", Err: wrapped}
		case pe.Code == "22021", pe.Code == "22P05", pe.Code == "54000":
			// A NUL byte or invalid UTF-8 in a text, or a value too large
			// for an index entry: sqlite took them, PostgreSQL cannot.
			return &agentotp.Error{Code: agentotp.CodeValidation, Message: "value cannot be stored", Err: wrapped}
		case pe.Code == "40001", pe.Code == "40P01", pe.Code == "55P03", pe.Code == "57014":
			// serialization_failure, deadlock_detected, lock_not_available
			// (lock_timeout), query_canceled (statement_timeout)
			return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "database busy, try again", Err: wrapped}
		case pe.Code == "25006", pe.Code == "58030", pe.Code == "25P03",
			strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "53"), strings.HasPrefix(pe.Code, "57P"):
			// A read-only server (a standby, default_transaction_read_only),
			// an I/O error, a full disk or memory, too many connections, a
			// server shutting down or not up yet, a transaction idle too
			// long: a retry may succeed once the operator fixes it.
			return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "storage unavailable, try again later", Err: wrapped}
		}
		return wrapped
	}
	if unreachable(err) {
		return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "storage unavailable, try again later", Err: wrapped}
	}
	return wrapped
}

// unreachable reports errors of the connection rather than the statement:
// the server cannot be reached, the connection broke, the pool is closed.
func unreachable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's own context ended: not the database's fault
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, net.ErrClosed) || pgconn.Timeout(err) || isClosedPool(err)
}

// isClosedPool recognizes the pool's "closed pool", whose value pgxpool
// does not export (it is its dependency's).
func isClosedPool(err error) bool {
	var pe *pgconn.PgError
	return !errors.As(err, &pe) && strings.HasSuffix(err.Error(), "closed pool")
}

func errConflict(msg string) error { return agentotp.Errorf(agentotp.CodeConflict, "%s", msg) }

func errNotFound(msg string) error { return agentotp.Errorf(agentotp.CodeNotFound, "%s", msg) }
