package sqlite

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/agentotp/agentotp"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// failure says what a driver error means for one operation. Each message is
// shown to clients, so it names the kind of thing, never the SQL.
type failure struct {
	notFound string // sql.ErrNoRows
	conflict string // UNIQUE or PRIMARY KEY violation
	missing  string // FOREIGN KEY violation: a referenced row is absent
}

// storeErr translates err by value and code: domain errors pass through,
// known driver conditions become *agentotp.Error, anything else is wrapped
// with op for the logs (and is an INTERNAL_ERROR to clients).
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
	if errors.Is(err, sql.ErrNoRows) && m.notFound != "" {
		return &agentotp.Error{Code: agentotp.CodeNotFound, Message: m.notFound}
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			if m.conflict != "" {
				return &agentotp.Error{Code: agentotp.CodeConflict, Message: m.conflict, Err: err}
			}
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			if m.missing != "" {
				return &agentotp.Error{Code: agentotp.CodeNotFound, Message: m.missing, Err: err}
			}
		case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL:
			return &agentotp.Error{Code: agentotp.CodeValidation, Message: "value out of range", Err: fmt.Errorf("%s: %w", op, err)}
		}
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "database busy, try again", Err: fmt.Errorf("%s: %w", op, err)}
		case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN:
			// A full disk, a file system that refuses writes (read-only,
			// quota, file size limit) or a file that cannot be opened: the
			// transaction is rolled back and a retry may succeed once an
			// operator fixes the disk. The cause goes to the log only.
			return &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "storage unavailable, try again later", Err: fmt.Errorf("%s: %w", op, err)}
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func errConflict(msg string) error { return agentotp.Errorf(agentotp.CodeConflict, "%s", msg) }

func errNotFound(msg string) error { return agentotp.Errorf(agentotp.CodeNotFound, "%s", msg) }
