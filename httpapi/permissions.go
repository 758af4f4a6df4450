package httpapi

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentotp/agentotp"
)

// MaxWait bounds long-polls.
const MaxWait = 60 * time.Second

// sseHeartbeat spaces keep-alive comments on idle event streams.
var sseHeartbeat = 15 * time.Second

// maxSeconds is the most seconds a time.Duration holds.
const maxSeconds = int(math.MaxInt64 / int64(time.Second))

func seconds(field string, v *int) (time.Duration, error) {
	if v == nil {
		return 0, nil
	}
	if *v <= 0 {
		return 0, agentotp.ValidationError(field, "must be a positive number of seconds")
	}
	if *v > maxSeconds {
		// Multiplied out, it would wrap around into the allowed range.
		return 0, agentotp.ValidationError(field, "is too large")
	}
	return time.Duration(*v) * time.Second, nil
}

func (s *Server) requestPermission(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b permissionRequestBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	req := agentotp.PermissionRequest{Action: b.Action, Resource: b.Resource, Scope: b.Scope, Context: b.Context,
		IdempotencyKey: b.IdempotencyKey, CallbackURL: b.CallbackURL, Tool: b.Tool.domain()}
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = r.Header.Get("Idempotency-Key")
	}
	var err error
	if req.TTL, err = seconds("ttl", b.TTL); err != nil {
		writeError(w, err)
		return
	}
	if req.ApprovalTTL, err = seconds("approvalTtl", b.ApprovalTTL); err != nil {
		writeError(w, err)
		return
	}
	if b.Uses != nil {
		if *b.Uses <= 0 {
			writeError(w, agentotp.ValidationError("uses", "must be between 1 and 1000"))
			return
		}
		req.Uses = *b.Uses
	}
	var (
		perm  *agentotp.Permission
		token agentotp.Secret
		used  *agentotp.UseResult
	)
	if b.Use != nil {
		perm, token, used, err = s.svc.RequestAndUse(r.Context(), p, req, b.Use.ActionDetails)
	} else {
		perm, token, err = s.svc.RequestPermission(r.Context(), p, req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusOK
	switch {
	case perm.Status == agentotp.StatusApproved, used != nil:
		status = http.StatusCreated
	case perm.Status == agentotp.StatusPending:
		status = http.StatusAccepted
	}
	v := s.permissionView(perm, token, false)
	if used != nil {
		v.Use = &useJSON{Success: used.Success, UsesRemaining: used.UsesRemaining, Reason: used.Reason}
	}
	writeData(w, status, v)
}

func parseWait(q string) (time.Duration, error) {
	if q == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(q)
	if err != nil {
		n, nerr := strconv.Atoi(q)
		if nerr != nil {
			return 0, agentotp.ValidationError("wait", "must be a duration such as 30s, or seconds")
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, agentotp.ValidationError("wait", "must not be negative")
	}
	return min(d, MaxWait), nil
}

func (s *Server) getPermission(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	wait, err := parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		writeError(w, err)
		return
	}
	if wait > 0 {
		release, ok := s.holdWaiter(p)
		if !ok {
			writeError(w, agentotp.Errorf(agentotp.CodeRateLimited, "too many open waits: at most %d per key", MaxWaiters))
			return
		}
		defer release()
	}
	perm, token, err := s.svc.GetPermission(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), wait)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, s.permissionView(perm, token, !p.IsAgent()))
}

// permissionEvents streams status changes as Server-Sent Events until the
// permission is terminal or the client leaves. The token is sent once.
func (s *Server) permissionEvents(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, fmt.Errorf("streaming unsupported"))
		return
	}
	release, ok := s.holdWaiter(p)
	if !ok {
		writeError(w, agentotp.Errorf(agentotp.CodeRateLimited, "too many open waits: at most %d per key", MaxWaiters))
		return
	}
	defer release()
	id := agentotp.PermissionID(r.PathValue("id"))
	// Events and keep-alive comments share the writer. The keep-alive
	// goroutine has ended before the handler returns: a write after that
	// would reach a response net/http has finished (and recycled), and a
	// panic there, outside the handler, would take the server down.
	var mu sync.Mutex
	started := false
	stop := make(chan struct{})
	var beats sync.WaitGroup
	defer func() {
		close(stop)
		beats.Wait()
	}()
	beats.Go(func() {
		t := time.NewTicker(s.heartbeat)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mu.Lock()
				if started {
					// A comment line keeps proxies from closing an idle stream.
					_, _ = io.WriteString(w, ": keep-alive\n\n")
					flusher.Flush()
				}
				mu.Unlock()
			}
		}
	})
	err := s.svc.Watch(r.Context(), p, id, func(perm *agentotp.Permission, token agentotp.Secret) error {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("X-Accel-Buffering", "no")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		b, err := json.Marshal(s.permissionView(perm, token, false))
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", b); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil && !started {
		s.fail(w, r, err)
	}
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b verifyBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Token == "" {
		writeError(w, agentotp.ValidationError("token", "is required"))
		return
	}
	res, err := s.svc.Verify(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), b.Token)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v := verifyJSON{Valid: res.Valid, Reason: res.Reason}
	if res.Valid {
		n := res.UsesRemaining
		v.Scope, v.UsesRemaining, v.ExpiresAt = res.Scope, &n, ts(res.ExpiresAt)
	}
	writeData(w, http.StatusOK, v)
}

func (s *Server) use(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b useBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Token == "" {
		writeError(w, agentotp.ValidationError("token", "is required"))
		return
	}
	res, err := s.svc.Use(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), b.Token, b.ActionDetails)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, useJSON{Success: res.Success, UsesRemaining: res.UsesRemaining, Reason: res.Reason})
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b revokeBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	perm, err := s.svc.Revoke(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), b.Reason)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, s.permissionView(perm, "", !p.IsAgent()))
}

type outcomeBody struct {
	Success     *bool  `json:"success"`
	DurationMs  int64  `json:"durationMs"`
	ResultBytes int    `json:"resultBytes"`
	Error       string `json:"error"`
}

// outcome records how the action under a spent permission went (the MCP
// gateway reports each downstream call).
func (s *Server) outcome(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b outcomeBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Success == nil {
		writeError(w, agentotp.ValidationError("success", "is required"))
		return
	}
	if b.DurationMs < 0 || b.DurationMs > 7*24*3600*1000 {
		writeError(w, agentotp.ValidationError("durationMs", "must be between 0 and a week"))
		return
	}
	err := s.svc.RecordOutcome(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), agentotp.Outcome{
		Success: *b.Success, Duration: time.Duration(b.DurationMs) * time.Millisecond, ResultBytes: b.ResultBytes, Error: b.Error,
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, map[string]any{"recorded": true})
}

func (s *Server) decide(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b decideBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Approved == nil {
		writeError(w, agentotp.ValidationError("approved", "is required"))
		return
	}
	perm, err := s.svc.Decide(r.Context(), p, agentotp.PermissionID(r.PathValue("id")), agentotp.DecideInput{
		Approved: *b.Approved, Reason: b.Reason, ScopeModifications: b.ScopeModifications,
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Never a token here: it goes to the requesting agent only.
	writeData(w, http.StatusOK, s.permissionView(perm, "", true))
}

func pageFrom(r *http.Request) (agentotp.Page, error) {
	var p agentotp.Page
	q := r.URL.Query()
	for _, f := range []struct {
		name string
		dst  *int
	}{{"page", &p.Page}, {"limit", &p.Limit}} {
		if v := q.Get(f.name); v != "" {
			n, err := strconv.Atoi(v)
			// A page past a million would overflow the row offset.
			if err != nil || n < 1 || (f.name == "limit" && n > 100) || n > 1_000_000 {
				return p, agentotp.ValidationError(f.name, "must be a positive integer (limit at most 100, page at most 1,000,000)")
			}
			*f.dst = n
		}
	}
	return p.Normalize(), nil
}

func (s *Server) approvals(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	page, err := pageFrom(r)
	if err != nil {
		writeError(w, err)
		return
	}
	status := agentotp.Status(strings.TrimSpace(r.URL.Query().Get("status")))
	if status == "" {
		status = agentotp.StatusPending
	}
	list, total, err := s.svc.ListPermissions(r.Context(), p, agentotp.PermissionFilter{
		Status: status, AgentID: agentotp.AgentID(r.URL.Query().Get("agentId")), Page: page})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	names := map[agentotp.AgentID]string{}
	out := make([]permissionJSON, 0, len(list))
	for _, perm := range list {
		v := s.permissionView(perm, "", true)
		if _, ok := names[perm.AgentID]; !ok && perm.AgentID != "" {
			if a, err := s.svc.Store().Agent(r.Context(), perm.AgentID); err == nil {
				names[perm.AgentID] = a.Name
			}
		}
		v.AgentName = names[perm.AgentID]
		out = append(out, v)
	}
	writeList(w, out, newPageMeta(page, total))
}
