package httpapi

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/agentotp/agentotp"
)

type cursorMeta struct {
	Limit      int    `json:"limit"`
	HasMore    bool   `json:"hasMore"`
	NextCursor string `json:"nextCursor,omitempty"`
}

func auditFilter(r *http.Request) (agentotp.AuditFilter, error) {
	q := r.URL.Query()
	f := agentotp.AuditFilter{
		AgentID:      agentotp.AgentID(q.Get("agentId")),
		PermissionID: agentotp.PermissionID(q.Get("permissionRequestId")),
		Type:         agentotp.EventType(q.Get("eventType")),
		Limit:        50,
	}
	for _, d := range []struct {
		name string
		dst  *time.Time
	}{{"startDate", &f.Start}, {"endDate", &f.End}} {
		if v := q.Get(d.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return f, agentotp.ValidationError(d.name, "must be an RFC 3339 timestamp")
			}
			*d.dst = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return f, agentotp.ValidationError("limit", "must be an integer from 1 to 1000")
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return f, agentotp.ValidationError("cursor", "is not a cursor from a previous page")
		}
		f.BeforeSeq = n
	}
	return f, nil
}

// writeAuditPage lists events (newest first unless f.Ascending); nextCursor
// continues past the last one.
func (s *Server) writeAuditPage(w http.ResponseWriter, r *http.Request, p agentotp.Principal, f agentotp.AuditFilter) {
	limit := f.Limit
	f.Limit++ // one more tells whether another page exists
	events, err := s.svc.ListAudit(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	meta := cursorMeta{Limit: limit}
	if len(events) > limit {
		events = events[:limit]
		meta.HasMore = true
		meta.NextCursor = strconv.FormatInt(events[len(events)-1].Seq, 10)
	}
	out := make([]any, 0, len(events))
	for _, e := range events {
		out = append(out, AuditView(e))
	}
	writeList(w, out, meta)
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	f, err := auditFilter(r)
	if err != nil {
		writeError(w, err)
		return
	}
	s.writeAuditPage(w, r, p, f)
}

// auditPermission lists one permission's trail oldest first; nextCursor
// continues after the last event.
func (s *Server) auditPermission(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	f, err := auditFilter(r)
	if err != nil {
		writeError(w, err)
		return
	}
	f.PermissionID, f.Ascending, f.AfterSeq, f.BeforeSeq = agentotp.PermissionID(r.PathValue("id")), true, f.BeforeSeq, 0
	if r.URL.Query().Get("limit") == "" {
		f.Limit = 1000
	}
	if !f.PermissionID.Valid() {
		writeError(w, agentotp.Errorf(agentotp.CodeNotFound, "permission request not found"))
		return
	}
	s.writeAuditPage(w, r, p, f)
}

func (s *Server) auditAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	f, err := auditFilter(r)
	if err != nil {
		writeError(w, err)
		return
	}
	f.AgentID = agentotp.AgentID(r.PathValue("id"))
	if !f.AgentID.Valid() {
		writeError(w, agentotp.Errorf(agentotp.CodeNotFound, "agent not found"))
		return
	}
	s.writeAuditPage(w, r, p, f)
}

func (s *Server) auditStats(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	st, err := s.svc.AuditStats(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	by := map[string]int64{}
	for k, v := range st.ByType {
		by[string(k)] = v
	}
	writeData(w, http.StatusOK, map[string]any{"period": "30d", "total": st.Total, "byEventType": by})
}

// auditVerify checks the keyed chain, the recorded head, an optional
// checkpoint (?checkpoint=LINE) and every permission against its events.
func (s *Server) auditVerify(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	rep, err := s.svc.VerifyAuditWith(r.Context(), p, agentotp.AuditVerifyOptions{Checkpoint: r.URL.Query().Get("checkpoint")})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v := map[string]any{
		"ok": rep.OK, "checked": rep.Checked, "lastSeq": rep.LastSeq, "lastHash": rep.LastHash,
		"keyed": rep.KeyID != "", "keyedFrom": rep.KeyedFrom, "unkeyed": rep.Unkeyed,
		"permissionsChecked": rep.Permissions,
	}
	if rep.KeyID != "" {
		v["keyId"] = rep.KeyID
	}
	if rep.Head != nil {
		v["checkpoint"] = rep.Head.String()
	}
	if !rep.OK {
		mismatches := make([]map[string]any, 0, len(rep.Mismatches))
		for _, m := range rep.Mismatches {
			mismatches = append(mismatches, map[string]any{"permissionId": m.PermissionID, "problems": m.Problems})
		}
		v["reason"], v["mismatches"], v["mismatchCount"] = rep.Reason, mismatches, rep.MismatchCount
		if rep.BadSeq > 0 {
			v["badSeq"] = rep.BadSeq
		}
	}
	writeData(w, http.StatusOK, v)
}

// auditExport streams the whole trail as JSON lines, oldest first.
func (s *Server) auditExport(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	if f := r.URL.Query().Get("format"); f != "" && f != "jsonl" {
		writeError(w, agentotp.ValidationError("format", "must be jsonl"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="agentotp-audit.jsonl"`)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	err := s.svc.ScanAudit(r.Context(), p, func(e *agentotp.AuditEvent) error { return enc.Encode(AuditView(e)) })
	if err != nil {
		// Headers are gone; a truncated stream is all we can signal.
		s.log.Error("audit export failed", "request_id", agentotp.RequestID(r.Context()), "err", err)
	}
	_ = bw.Flush()
}
