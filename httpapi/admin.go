package httpapi

import (
	"net/http"
	"time"

	"github.com/agentotp/agentotp"
)

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	page, err := pageFrom(r)
	if err != nil {
		writeError(w, err)
		return
	}
	list, total, err := s.svc.ListAgents(r.Context(), p, page)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]agentJSON, 0, len(list))
	for _, a := range list {
		out = append(out, agentView(a, ""))
	}
	writeList(w, out, newPageMeta(page, total))
}

func (s *Server) createAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b agentBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.IsActive != nil {
		writeError(w, agentotp.ValidationError("isActive", "cannot be set on create"))
		return
	}
	in := agentotp.AgentInput{Metadata: b.Metadata}
	if b.Name != nil {
		in.Name = *b.Name
	}
	if b.Description != nil {
		in.Description = *b.Description
	}
	a, key, err := s.svc.CreateAgent(r.Context(), p, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, s.agentWithKey(a, key))
}

func (s *Server) getAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	a, err := s.svc.GetAgent(r.Context(), p, agentotp.AgentID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, agentView(a, ""))
}

func (s *Server) updateAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b agentBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	a, err := s.svc.UpdateAgent(r.Context(), p, agentotp.AgentID(r.PathValue("id")), agentotp.AgentPatch{
		Name: b.Name, Description: b.Description, Metadata: b.Metadata, Active: b.IsActive})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, agentView(a, ""))
}

func (s *Server) deleteAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	if err := s.svc.DeleteAgent(r.Context(), p, agentotp.AgentID(r.PathValue("id"))); err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, map[string]bool{"deleted": true})
}

func (s *Server) rotateAgent(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	a, key, err := s.svc.RotateAgentKey(r.Context(), p, agentotp.AgentID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, s.agentWithKey(a, key))
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	page, err := pageFrom(r)
	if err != nil {
		writeError(w, err)
		return
	}
	list, total, err := s.svc.ListUsers(r.Context(), p, page)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]userJSON, 0, len(list))
	for _, u := range list {
		out = append(out, userView(u, ""))
	}
	writeList(w, out, newPageMeta(page, total))
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b userBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.IsActive != nil {
		writeError(w, agentotp.ValidationError("isActive", "cannot be set on create"))
		return
	}
	var in agentotp.UserInput
	if b.Name != nil {
		in.Name = *b.Name
	}
	if b.Role != nil {
		in.Role = agentotp.Role(*b.Role)
	}
	if b.TelegramID != nil {
		in.TelegramID = *b.TelegramID
	}
	u, key, err := s.svc.CreateUser(r.Context(), p, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, userView(u, key))
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	u, err := s.svc.GetUser(r.Context(), p, agentotp.UserID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, userView(u, ""))
}

func (s *Server) updateUser(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b userBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	patch := agentotp.UserPatch{Name: b.Name, TelegramID: b.TelegramID, Active: b.IsActive}
	if b.Role != nil {
		role := agentotp.Role(*b.Role)
		patch.Role = &role
	}
	u, err := s.svc.UpdateUser(r.Context(), p, agentotp.UserID(r.PathValue("id")), patch)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, userView(u, ""))
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	if err := s.svc.DeleteUser(r.Context(), p, agentotp.UserID(r.PathValue("id"))); err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, map[string]bool{"deleted": true})
}

func (s *Server) rotateUser(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	u, key, err := s.svc.RotateUserKey(r.Context(), p, agentotp.UserID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, userView(u, key))
}

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	page, err := pageFrom(r)
	if err != nil {
		writeError(w, err)
		return
	}
	api, total, files, err := s.svc.ListPolicies(r.Context(), p, page)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]policyJSON, 0, len(api)+len(files))
	for _, pol := range api {
		out = append(out, policyView(pol, "api"))
	}
	// File rules are listed read-only on the first page.
	if page.Page == 1 {
		for _, pol := range files {
			out = append(out, policyView(pol, "file"))
		}
	}
	writeList(w, out, newPageMeta(page, total))
}

// applyPolicy copies the fields present in b onto pol.
func applyPolicy(pol *agentotp.Policy, b policyBody) error {
	if b.AgentID != nil {
		pol.AgentID = agentotp.AgentID(*b.AgentID)
	}
	if b.Name != nil {
		pol.Name = *b.Name
	}
	if b.Description != nil {
		pol.Description = *b.Description
	}
	if b.Priority != nil {
		pol.Priority = *b.Priority
	}
	if b.Conditions != nil {
		pol.Conditions = b.Conditions
	}
	if b.When != nil {
		pol.When = *b.When
	}
	if b.Action != nil {
		eff, ok := agentotp.ParseEffect(*b.Action)
		if !ok {
			return agentotp.ValidationError("action", "must be auto_approve, require_approval or deny")
		}
		pol.Effect = eff
	}
	if b.ScopeTemplate != nil {
		pol.ScopeTemplate = b.ScopeTemplate
	}
	if b.Approvers != nil {
		pol.Approvers = b.Approvers
	}
	if b.Quorum != nil {
		pol.Quorum = *b.Quorum
	}
	if b.Token != nil {
		if b.Token.TTL != nil {
			pol.TokenTTL = time.Duration(*b.Token.TTL) * time.Second
		}
		if b.Token.Uses != nil {
			pol.TokenUses = *b.Token.Uses
		}
	}
	if b.UseWhen != nil {
		pol.UseWhen = *b.UseWhen
	}
	if b.IsActive != nil {
		pol.Active = *b.IsActive
	}
	return nil
}

func (s *Server) createPolicy(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b policyBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Action == nil {
		writeError(w, agentotp.ValidationError("action", "is required"))
		return
	}
	pol := &agentotp.Policy{Active: true}
	if err := applyPolicy(pol, b); err != nil {
		writeError(w, err)
		return
	}
	pol, err := s.svc.CreatePolicy(r.Context(), p, pol)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusCreated, policyView(pol, "api"))
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	pol, err := s.svc.GetPolicy(r.Context(), p, agentotp.PolicyID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, policyView(pol, "api"))
}

func (s *Server) updatePolicy(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	var b policyBody
	if err := decode(r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.AgentID != nil {
		writeError(w, agentotp.ValidationError("agentId", "cannot be changed; create a new policy"))
		return
	}
	pol, err := s.svc.GetPolicy(r.Context(), p, agentotp.PolicyID(r.PathValue("id")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := applyPolicy(pol, b); err != nil {
		writeError(w, err)
		return
	}
	pol, err = s.svc.UpdatePolicy(r.Context(), p, pol)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, policyView(pol, "api"))
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
	if err := s.svc.DeletePolicy(r.Context(), p, agentotp.PolicyID(r.PathValue("id"))); err != nil {
		s.fail(w, r, err)
		return
	}
	writeData(w, http.StatusOK, map[string]bool{"deleted": true})
}
