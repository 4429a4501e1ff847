package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"
)

// Approval as a mint passes through it (path_approvals.go has the rest):
// a mint that redeems an approved request opens it first (redeeming), a
// mint that asks for scopes its role keeps for approval stores a request
// instead of a credential (needsApproval), and a redemption that minted is
// recorded (redeemed). The approved request is a parameter of the mint,
// never a value in its context.

// redeeming opens the approved request ask names (ask.approvalID, on a mint
// path of kind ask.kind under role roleName) for its requester: checked,
// and locked until unlock, which the mint calls once done. A mint that
// redeems none gets a nil request and a no-op unlock; resp says why the
// request cannot be redeemed. r is the role as the mint opened it (the
// role as it is now: approvals_required raised since the approval sends
// the request back to its approvers).
func (ap *approvals) redeeming(ctx context.Context, req *logical.Request, r *role, roleName string, ask approvalAsk) (a *approvalRequest, unlock func(), resp *logical.Response, err error) {
	unlock = func() {}
	if ask.approvalID == "" {
		return nil, unlock, nil, nil
	}
	if len(ask.fields) > 0 {
		return nil, unlock, logical.ErrorResponse("with approval_id give no other field (%s): the approved request's fields apply", slices.Min(slices.Collect(maps.Keys(ask.fields)))), nil
	}
	id := ask.approvalID
	unlockRequest := ap.lock(id)
	a, resp, err = ap.approvedRequest(ctx, req, r, roleName, ask.kind, id)
	if a == nil {
		unlockRequest()
		return nil, unlock, resp, err
	}
	return a, unlockRequest, nil, nil
}

// approvedRequest reads approved request id for its requester, under its
// lock; nil with why when it is not one to redeem now.
func (ap *approvals) approvedRequest(ctx context.Context, req *logical.Request, r *role, roleName, kind, id string) (*approvalRequest, *logical.Response, error) {
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPath(roleName, id))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	switch {
	case a == nil || a.Kind != kind || a.Role != roleName:
		return nil, logical.ErrorResponse("approval_id %q is not an approval request for this path", id), nil
	case req.EntityID == "" || req.EntityID != a.RequesterEntity:
		return nil, logical.ErrorResponse("approval request %s can be redeemed only by its requester's Vault entity", id), nil
	case a.state(now) != approvalApproved:
		return nil, logical.ErrorResponse("approval request %s is %s, not approved: nothing to redeem", id, a.state(now)), nil
	}
	if len(a.Approvals) < r.approvalsRequired() {
		a.Required, a.ApprovedAt, a.RedeemBy = r.approvalsRequired(), time.Time{}, time.Time{}
		if err := ap.put(ctx, req.Storage, a, a.ExpiresAt); err != nil {
			return nil, nil, err
		}
		return nil, logical.ErrorResponse("role %q now requires %d approvals and request %s has %d: it is pending again until %s", roleName, a.Required, id, len(a.Approvals), a.ExpiresAt.Format(time.RFC3339)), nil
	}
	return a, nil, nil
}

// needsApproval is the answer to a mint that asks for scopes its role r
// keeps for approval (needs): a stored request, no credential. nil when the
// mint needs no approval or redeems an approved request (approved).
func (ap *approvals) needsApproval(ctx context.Context, req *logical.Request, r *role, roleName string, scopes, needs []string, ask approvalAsk, approved *approvalRequest, log hclog.Logger) (*logical.Response, error) {
	if len(needs) == 0 || approved != nil {
		return nil, nil
	}
	if req.EntityID == "" {
		return logical.ErrorResponse("scopes %s need approval under role %q, and an approval request needs a Vault entity to redeem it: the caller (a root or orphan token) has none", strings.Join(needs, ", "), roleName), nil
	}
	id, err := uuid.GenerateUUID()
	if err != nil {
		return nil, fmt.Errorf("generating approval id: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	if enc, err := json.Marshal(ask.fields); err != nil || len(enc) > maxApprovalBytes {
		return logical.ErrorResponse("the request's fields are over %d bytes: an approval request stores them, so send less", maxApprovalBytes), nil
	}
	a := &approvalRequest{ID: id, Kind: ask.kind, Role: roleName, Data: ask.fields, Scopes: scopes, Needs: needs, Required: r.approvalsRequired(),
		RequesterEntity: req.EntityID, RequesterName: req.DisplayName, CreatedAt: now, ExpiresAt: now.Add(r.approvalTTL())}
	if resp, err := ap.admit(ctx, req.Storage, a, now); resp != nil || err != nil {
		return resp, err
	}
	if err := putJSON(ctx, req.Storage, approvalPath(roleName, id), a); err != nil {
		return nil, err
	}
	log.Info("approval requested", "request_id", id, "role", roleName, "scopes", strings.Join(needs, ","), "entity_id", req.EntityID)
	return &logical.Response{Data: map[string]interface{}{
		"approval_required": true,
		"request_id":        id,
		// The same id under the name a mint redeems it with: the vault
		// CLI's -field=request_id prints Vault's own request id.
		"approval_id":        id,
		"approval_scopes":    needs,
		"approvals_required": a.Required,
		"expires_at":         a.ExpiresAt.Format(time.RFC3339),
		"reason": fmt.Sprintf("scopes %s need %d approval(s) under role %q (approval_scopes): approvers write keybroker/approvals/%s/%s action=approve, then mint again with approval_id=%s before %s",
			strings.Join(needs, ", "), a.Required, roleName, roleName, id, id, a.ExpiresAt.Format(time.RFC3339)),
	}}, nil
}

// redeemed records that approved request a (nil: the mint redeemed none)
// was redeemed for the credential resp answers. It comes once the
// credential is minted: a failed mint leaves the request to redeem again.
// It returns the mint's answer.
func (ap *approvals) redeemed(ctx context.Context, s logical.Storage, a *approvalRequest, resp *logical.Response, log hclog.Logger) (*logical.Response, error) {
	if a == nil {
		return resp, nil
	}
	a.RedeemedAt = time.Now().UTC()
	a.Credential, _ = resp.Data["key_id"].(string)
	if a.Credential == "" {
		a.Credential, _ = resp.Data["jti"].(string)
	}
	if err := ap.put(ctx, s, a, time.Time{}); err != nil {
		return nil, err
	}
	log.Info("approval redeemed", "request_id", a.ID, "credential", a.Credential)
	return resp, nil
}
