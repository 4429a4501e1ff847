package backend

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// Approval of risky scopes. A mint (keys/<role> or token/<role>) asking for
// one of the role's approval_scopes stores the request and answers with its
// id instead of a credential. Approvers (any Vault entity allowed to update
// approvals/<id>, never the requester) approve or deny it; with enough
// distinct approvals the requester, and only the requester's entity,
// redeems it through the same mint path with approval_id, within a window,
// for a credential with those scopes and a lifetime the role caps. Every
// step is a Vault request, so the audit log shows who did what.

const approvalPrefix = "approvals/"

// approvalRetention is how long a finished request (denied, expired,
// redeemed) stays readable before tidy removes it.
const approvalRetention = 24 * time.Hour

// Kinds of credential an approval request is for.
const (
	approvalKindKey   = "api_key"
	approvalKindToken = "token"
)

// The states of an approval request.
const (
	approvalPending  = "pending"
	approvalApproved = "approved"
	approvalDenied   = "denied"
	approvalExpired  = "expired"
	approvalRedeemed = "redeemed"
)

type approvalRequest struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Role string `json:"role"`
	// Data is the mint request's fields as sent (role and approval_id
	// aside): the redemption mints exactly what was approved.
	Data     map[string]interface{} `json:"data"`
	Scopes   []string               `json:"scopes"`
	Needs    []string               `json:"needs"`
	Required int                    `json:"required"`

	RequesterEntity string    `json:"requester_entity"`
	RequesterName   string    `json:"requester_name"`
	CreatedAt       time.Time `json:"created_at"`
	ExpiresAt       time.Time `json:"expires_at"`

	Approvals  []approvalVote `json:"approvals,omitempty"`
	Denial     *approvalVote  `json:"denial,omitempty"`
	ApprovedAt time.Time      `json:"approved_at,omitzero"`
	RedeemBy   time.Time      `json:"redeem_by,omitzero"`
	RedeemedAt time.Time      `json:"redeemed_at,omitzero"`
	// Credential is the key_id or jti it was redeemed for.
	Credential string `json:"credential,omitempty"`
}

// approvalVote is one approver's decision.
type approvalVote struct {
	Entity  string    `json:"entity"`
	Name    string    `json:"name"`
	At      time.Time `json:"at"`
	Comment string    `json:"comment,omitempty"`
}

func (a *approvalRequest) state(now time.Time) string {
	switch {
	case !a.RedeemedAt.IsZero():
		return approvalRedeemed
	case a.Denial != nil:
		return approvalDenied
	case !a.ApprovedAt.IsZero() && now.Before(a.RedeemBy):
		return approvalApproved
	case !a.ApprovedAt.IsZero(), !now.Before(a.ExpiresAt):
		return approvalExpired
	}
	return approvalPending
}

// done is when a request can be forgotten: its retention after it ended.
func (a *approvalRequest) done() time.Time {
	end := maxTime(a.ExpiresAt, a.RedeemBy, a.RedeemedAt)
	if a.Denial != nil {
		end = a.Denial.At
	}
	return end.Add(approvalRetention)
}

func (a *approvalRequest) data(now time.Time) map[string]interface{} {
	votes := func(vs []approvalVote) []map[string]interface{} {
		out := make([]map[string]interface{}, 0, len(vs))
		for _, v := range vs {
			out = append(out, map[string]interface{}{"entity_id": v.Entity, "name": v.Name, "at": v.At.Format(time.RFC3339), "comment": v.Comment})
		}
		return out
	}
	d := map[string]interface{}{
		"request_id":          a.ID,
		"kind":                a.Kind,
		"role":                a.Role,
		"state":               a.state(now),
		"scopes":              nonNil(a.Scopes),
		"approval_scopes":     nonNil(a.Needs),
		"approvals_required":  a.Required,
		"approvals":           votes(a.Approvals),
		"requester_entity_id": a.RequesterEntity,
		"requester_name":      a.RequesterName,
		"created_at":          a.CreatedAt.Format(time.RFC3339),
		"expires_at":          a.ExpiresAt.Format(time.RFC3339),
		"request":             maps.Clone(a.Data),
	}
	if a.Denial != nil {
		d["denied_by"] = votes([]approvalVote{*a.Denial})[0]
	}
	if !a.RedeemBy.IsZero() {
		d["redeem_by"] = a.RedeemBy.Format(time.RFC3339)
	}
	if a.Credential != "" {
		d["credential_id"] = a.Credential
	}
	return d
}

func approvalFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"request_id":          out(framework.TypeString, "The approval request's id."),
		"kind":                withAllowed(out(framework.TypeString, "What it mints: api_key or token."), approvalKindKey, approvalKindToken),
		"role":                out(framework.TypeString, "Role it mints from."),
		"state":               withAllowed(out(framework.TypeString, "pending, approved (redeemable until redeem_by), denied, expired or redeemed."), approvalPending, approvalApproved, approvalDenied, approvalExpired, approvalRedeemed),
		"scopes":              out(framework.TypeStringSlice, "Scopes the credential will carry."),
		"approval_scopes":     out(framework.TypeStringSlice, "The scopes among them that need approval."),
		"approvals_required":  out(framework.TypeInt, "Distinct approvers needed."),
		"approvals":           out(framework.TypeSlice, "Approvals so far: entity_id, name, at, comment."),
		"denied_by":           out(framework.TypeMap, "Who denied it (entity_id, name, at, comment), when denied."),
		"requester_entity_id": out(framework.TypeString, "Vault entity that asked; only it can redeem."),
		"requester_name":      out(framework.TypeString, "The requester's display name when it asked."),
		"created_at":          out(framework.TypeTime, "When it was asked."),
		"expires_at":          out(framework.TypeTime, "When it expires unless approved."),
		"redeem_by":           out(framework.TypeTime, "Once approved: the end of the window to redeem it."),
		"credential_id":       out(framework.TypeString, "Once redeemed: the key_id or jti minted."),
		"request":             out(framework.TypeMap, "The mint request's fields, as the requester sent them."),
	}
}

// pendingAnswerFields are what a mint answers instead of a credential.
func pendingAnswerFields() map[string]*framework.FieldSchema {
	return merged(pick(approvalFields(), "request_id", "approval_scopes", "approvals_required", "expires_at"), map[string]*framework.FieldSchema{
		"approval_required": out(framework.TypeBool, "True: no credential was minted; approvers must approve request_id, then the requester mints again with approval_id."),
		"reason":            out(framework.TypeString, "Why the mint needs approval."),
	})
}

func pathApprovals(b *backend) []*framework.Path {
	list, item := pathAttrs("approval-requests"), pathAttrs("approval-request")
	list.Navigation, list.ItemType, item.ItemType = true, "Approval request", "Approval request"
	return []*framework.Path{
		{
			Pattern:      "approvals/?$",
			DisplayAttrs: list,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: operation(b.pathApprovalList, listAnswer("Ids of approval requests not yet tidied.", "Per id: kind, role, state, scopes, approval_scopes, approvals (count), approvals_required, requester_entity_id, requester_name, expires_at.")),
			},
			HelpSynopsis:    "List approval requests.",
			HelpDescription: "Lists approval requests not yet tidied, with their state, so approvers see what waits for them.",
		},
		{
			Pattern: "approvals/" + framework.GenericNameRegex("id"),
			Fields: map[string]*framework.FieldSchema{
				"id": {Type: framework.TypeString, Description: "The approval request's id.", Required: true},
				"action": {
					Type:          framework.TypeString,
					Description:   "approve or deny.",
					AllowedValues: []interface{}{"approve", "deny"},
				},
				"comment": {Type: framework.TypeString, Description: fmt.Sprintf("Why, for the record (at most %d characters).", maxNameLength)},
			},
			DisplayAttrs: item,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation:   operation(b.pathApprovalRead, answers(approvalFields())),
				logical.UpdateOperation: operationAs("decide", "", b.pathApprovalDecide, answers(withoutFields(approvalFields(), "credential_id"))),
			},
			HelpSynopsis: "Read, approve or deny an approval request.",
			HelpDescription: `An update with action=approve or action=deny records the caller's decision.
The caller must be a Vault entity other than the requester (root and orphan
tokens have none and cannot decide), may approve a request once, and only a
pending one. The request is approved once approvals_required distinct
entities approved it; one denial ends it. The requester then mints again,
on the same path, with only approval_id, within the role's
approval_redeem_ttl.`,
		},
	}
}

// approvalID is the mint field that redeems an approved request.
func approvalIDField() *framework.FieldSchema {
	return &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Redeem this approved request (keybroker/approvals): give no other field; the credential is the approved request's, its lifetime capped at the role's approved_max_ttl. Only the requester's Vault entity can redeem, once.",
	}
}

type approvedKey struct{}

// approvalOf is the approved request a mint is redeeming, nil for a mint.
func approvalOf(ctx context.Context) *approvalRequest {
	a, _ := ctx.Value(approvedKey{}).(*approvalRequest)
	return a
}

// needsApproval is the answer to a mint that asks for approval scopes: a
// stored request, no credential. nil when the mint needs no approval.
func (b *backend) needsApproval(ctx context.Context, req *logical.Request, d *framework.FieldData, kind, roleName string, r *role, scopes []string) (*logical.Response, error) {
	needs := subset(scopes, subset(scopes, r.ApprovalScopes))
	if len(needs) == 0 || approvalOf(ctx) != nil {
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
	data := maps.Clone(d.Raw)
	delete(data, "role")
	delete(data, "approval_id")
	a := &approvalRequest{ID: id, Kind: kind, Role: roleName, Data: data, Scopes: scopes, Needs: needs, Required: r.approvalsRequired(),
		RequesterEntity: req.EntityID, RequesterName: req.DisplayName, CreatedAt: now, ExpiresAt: now.Add(r.approvalTTL())}
	if err := putJSON(ctx, req.Storage, approvalPrefix+id, a); err != nil {
		return nil, err
	}
	b.Logger().Info("approval requested", "request_id", id, "role", roleName, "scopes", strings.Join(needs, ","), "entity_id", req.EntityID)
	return &logical.Response{Data: map[string]interface{}{
		"approval_required":  true,
		"request_id":         id,
		"approval_scopes":    needs,
		"approvals_required": a.Required,
		"expires_at":         a.ExpiresAt.Format(time.RFC3339),
		"reason": fmt.Sprintf("scopes %s need %d approval(s) under role %q (approval_scopes): approvers write keybroker/approvals/%s action=approve, then mint again with approval_id=%s before %s",
			strings.Join(needs, ", "), a.Required, roleName, id, id, a.ExpiresAt.Format(time.RFC3339)),
	}}, nil
}

// redeemApproval mints the credential of an approved request for its
// requester, once: mint is the path's own mint, run with the request's
// fields.
func (b *backend) redeemApproval(ctx context.Context, req *logical.Request, d *framework.FieldData, kind string, mint framework.OperationFunc) (*logical.Response, error) {
	id, roleName := d.Get("approval_id").(string), d.Get("role").(string)
	for k := range d.Raw {
		if k != "approval_id" && k != "role" {
			return logical.ErrorResponse("with approval_id give no other field (%s): the approved request's fields apply", k), nil
		}
	}
	l := locksutil.LockForKey(b.approvalLocks, id)
	l.Lock()
	defer l.Unlock()
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPrefix+id)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	switch {
	case a == nil || a.Kind != kind || a.Role != roleName:
		return logical.ErrorResponse("approval_id %q is not an approval request for this path", id), nil
	case req.EntityID == "" || req.EntityID != a.RequesterEntity:
		return logical.ErrorResponse("approval request %s can be redeemed only by its requester's Vault entity", id), nil
	case a.state(now) != approvalApproved:
		return logical.ErrorResponse("approval request %s is %s, not approved: nothing to redeem", id, a.state(now)), nil
	}
	raw := maps.Clone(a.Data)
	raw["role"] = roleName
	resp, err := mint(context.WithValue(ctx, approvedKey{}, a), req, &framework.FieldData{Raw: raw, Schema: d.Schema})
	if err != nil || resp == nil || resp.IsError() {
		return resp, err
	}
	a.RedeemedAt = now.UTC()
	a.Credential, _ = resp.Data["key_id"].(string)
	if a.Credential == "" {
		a.Credential, _ = resp.Data["jti"].(string)
	}
	if err := putJSON(ctx, req.Storage, approvalPrefix+id, a); err != nil {
		return nil, err
	}
	b.Logger().Info("approval redeemed", "request_id", id, "credential", a.Credential)
	return resp, nil
}

// approvedTTL caps a redeemed credential's lifetime at the role's
// approved_max_ttl; ttl unchanged for a mint.
func approvedTTL(ctx context.Context, r *role, ttl time.Duration, warnings []string) (time.Duration, []string) {
	if approvalOf(ctx) == nil || ttl <= r.approvedMaxTTL() {
		return ttl, warnings
	}
	return r.approvedMaxTTL(), append(warnings, fmt.Sprintf("ttl capped at the role's approved_max_ttl (%s)", r.approvedMaxTTL()))
}

func (b *backend) pathApprovalList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	ids, err := req.Storage.List(ctx, approvalPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing approvals: %w", err)
	}
	sort.Strings(ids)
	now := time.Now()
	info := make(map[string]interface{}, len(ids))
	for _, id := range ids {
		a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPrefix+id)
		if err != nil {
			return nil, err
		}
		if a == nil {
			continue
		}
		info[id] = map[string]interface{}{
			"kind": a.Kind, "role": a.Role, "state": a.state(now), "scopes": nonNil(a.Scopes), "approval_scopes": nonNil(a.Needs),
			"approvals": len(a.Approvals), "approvals_required": a.Required, "requester_entity_id": a.RequesterEntity,
			"requester_name": a.RequesterName, "expires_at": a.ExpiresAt.Format(time.RFC3339),
		}
	}
	return logical.ListResponseWithInfo(ids, info), nil
}

func (b *backend) pathApprovalRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPrefix+d.Get("id").(string))
	if err != nil || a == nil {
		return nil, err
	}
	return &logical.Response{Data: a.data(time.Now())}, nil
}

func (b *backend) pathApprovalDecide(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id, action, comment := d.Get("id").(string), d.Get("action").(string), d.Get("comment").(string)
	if action != "approve" && action != "deny" {
		return logical.ErrorResponse("action must be approve or deny"), nil
	}
	if err := validateText("comment", comment, maxNameLength); comment != "" && err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	if req.EntityID == "" {
		return logical.ErrorResponse("deciding on an approval request needs a Vault entity: the caller (a root or orphan token) has none, and approvers must be told apart"), nil
	}
	l := locksutil.LockForKey(b.approvalLocks, id)
	l.Lock()
	defer l.Unlock()
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPrefix+id)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	switch {
	case a == nil:
		return logical.ErrorResponse("approval request %q does not exist", id), nil
	case req.EntityID == a.RequesterEntity:
		return logical.ErrorResponse("the requester cannot decide on its own approval request"), nil
	case a.state(now) != approvalPending:
		return logical.ErrorResponse("approval request %s is %s: it takes no more decisions", id, a.state(now)), nil
	case slices.ContainsFunc(a.Approvals, func(v approvalVote) bool { return v.Entity == req.EntityID }):
		return logical.ErrorResponse("this Vault entity already approved request %s: approvals must come from %d distinct entities", id, a.Required), nil
	}
	vote := approvalVote{Entity: req.EntityID, Name: req.DisplayName, At: now.Truncate(time.Second), Comment: comment}
	if action == "deny" {
		a.Denial = &vote
	} else {
		a.Approvals = append(a.Approvals, vote)
		if len(a.Approvals) >= a.Required {
			r, err := b.getRole(ctx, req.Storage, a.Role)
			if err != nil {
				return nil, err
			}
			redeem := 15 * time.Minute
			if r != nil {
				redeem = r.approvalRedeemTTL()
			}
			a.ApprovedAt, a.RedeemBy = vote.At, vote.At.Add(redeem)
		}
	}
	if err := putJSON(ctx, req.Storage, approvalPrefix+id, a); err != nil {
		return nil, err
	}
	b.Logger().Info("approval decided", "request_id", id, "action", action, "entity_id", req.EntityID, "state", a.state(now))
	return &logical.Response{Data: a.data(now)}, nil
}
