package backend

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Approval of risky scopes. A mint (keys/<role> or token/<role>) asking for
// one of the role's approval_scopes stores the request and answers with its
// id instead of a credential. Approvers (any Vault entity allowed to update
// approvals/<role>/<id>, never the requester) approve or deny it; with enough
// distinct approvals the requester, and only the requester's entity,
// redeems it through the same mint path with approval_id, within a window,
// for a credential with those scopes and a lifetime the role caps. Every
// step is a Vault request, so the audit log shows who did what. Requests
// are stored under their role (approvals/<role>/<id>), so that a policy on
// keybroker/approvals/<role>/* grants one role's approvals, and how many can
// wait is bounded per requester and per role (approval-index/<role>).

// Bounds on what requesters can make the plugin store: live (pending, or
// approved and not yet redeemed) requests per Vault entity and per role,
// and the size of one request's stored fields.
const (
	maxLivePerRequester = 5
	maxLivePerRole      = 100
	maxStoredPerRole    = 1000
	maxApprovalBytes    = 32 << 10
)

// Pages of approvals/<role>/.
const (
	defaultApprovalPage = 100
	maxApprovalPage     = 1000
)

// approvalRetention is how long a decided request (denied, approved,
// redeemed) stays readable before tidy removes it; one that expired with
// no decision goes after expiredApprovalRetention, so that asking again and
// again cannot fill storage (the audit log keeps every ask).
const (
	approvalRetention        = 24 * time.Hour
	expiredApprovalRetention = time.Hour
)

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
	switch {
	case a.Denial != nil:
		end = a.Denial.At
	case len(a.Approvals) == 0:
		return end.Add(expiredApprovalRetention)
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
		"approval_id":         a.ID,
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
		"request_id":          out(framework.TypeString, "The approval request's id (as approval_id)."),
		"approval_id":         out(framework.TypeString, "The approval request's id, as a mint redeems it (approval_id=); the same as request_id, which `vault write -field=request_id` cannot print (the CLI takes Vault's own request id)."),
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
	return merged(pick(approvalFields(), "request_id", "approval_id", "approval_scopes", "approvals_required", "expires_at"), map[string]*framework.FieldSchema{
		"approval_required": out(framework.TypeBool, "True: no credential was minted; approvers must approve request_id, then the requester mints again with approval_id."),
		"reason":            out(framework.TypeString, "Why the mint needs approval."),
	})
}

func pathApprovals(b *backend) []*framework.Path {
	roles, list, item := pathAttrs("approval-roles"), pathAttrs("approval-requests"), pathAttrs("approval-request")
	roles.Navigation, list.ItemType, item.ItemType = true, "Approval request", "Approval request"
	roleField := &framework.FieldSchema{Type: framework.TypeString, Description: "The role the request mints from.", Required: true}
	return []*framework.Path{
		{
			Pattern:      "approvals/?$",
			DisplayAttrs: roles,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: operation(b.pathApprovalRoles, listAnswer("Roles with approval requests not yet tidied, each as <role>/.", "")),
			},
			HelpSynopsis:    "List the roles that have approval requests.",
			HelpDescription: "Each role is a folder: list approvals/<role>/ for its requests.",
		},
		{
			Pattern: "approvals/" + framework.GenericNameRegex("role") + "/?$",
			Fields: map[string]*framework.FieldSchema{
				"role": roleField,
				"after": {
					Type:        framework.TypeString,
					Description: "List the ids after this one (paging: give the last id of the previous page).",
				},
				"limit": {
					Type:        framework.TypeInt,
					Description: fmt.Sprintf("At most this many ids (1 to %d).", maxApprovalPage),
					Default:     defaultApprovalPage,
				},
			},
			DisplayAttrs: list,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: operation(b.pathApprovalList, listAnswer("Ids of the role's approval requests not yet tidied, in order, one page.", "Per id: kind, role, state, scopes, approval_scopes, approvals (count), approvals_required, requester_entity_id, requester_name, expires_at.")),
			},
			HelpSynopsis: "List a role's approval requests, a page at a time.",
			HelpDescription: fmt.Sprintf(`Lists the role's approval requests not yet tidied, with their state, so
approvers see what waits for them: at most limit ids (default %d), after
the id given in after. A page shorter than limit is the last.`, defaultApprovalPage),
		},
		{
			Pattern: "approvals/" + framework.GenericNameRegex("role") + "/" + framework.GenericNameRegex("id"),
			Fields: map[string]*framework.FieldSchema{
				"role": roleField,
				"id":   {Type: framework.TypeString, Description: "The approval request's id.", Required: true},
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
pending one. The role's rules apply as they are when each decision is made:
the request is approved once the role's approvals_required (now) distinct
entities approved it, and a role deleted meanwhile takes only denials; one
denial ends it. The requester then mints again, on the same path, with
only approval_id, within the role's approval_redeem_ttl.`,
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

func (b *backend) pathApprovalRoles(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, approvalPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing approvals: %w", err)
	}
	roles := make([]string, 0, len(names))
	for _, n := range names {
		if strings.HasSuffix(n, "/") {
			roles = append(roles, n)
		}
	}
	return logical.ListResponse(roles), nil
}

func (b *backend) pathApprovalList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	role, after, limit := d.Get("role").(string), d.Get("after").(string), d.Get("limit").(int)
	if limit < 1 || limit > maxApprovalPage {
		return logical.ErrorResponse("limit must be between 1 and %d, got %d", maxApprovalPage, limit), nil
	}
	ids, err := req.Storage.List(ctx, approvalsOfRole(role))
	if err != nil {
		return nil, fmt.Errorf("listing approvals: %w", err)
	}
	sort.Strings(ids)
	ids = ids[sort.SearchStrings(ids, after):]
	if len(ids) > 0 && ids[0] == after {
		ids = ids[1:]
	}
	now := time.Now()
	page := make([]string, 0, min(limit, len(ids)))
	info := make(map[string]interface{}, cap(page))
	for _, id := range ids {
		if len(page) == limit {
			break
		}
		a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPath(role, id))
		if err != nil {
			return nil, err
		}
		if a == nil {
			continue
		}
		page = append(page, id)
		info[id] = map[string]interface{}{
			"kind": a.Kind, "role": a.Role, "state": a.state(now), "scopes": nonNil(a.Scopes), "approval_scopes": nonNil(a.Needs),
			"approvals": len(a.Approvals), "approvals_required": a.Required, "requester_entity_id": a.RequesterEntity,
			"requester_name": a.RequesterName, "expires_at": a.ExpiresAt.Format(time.RFC3339),
		}
	}
	return logical.ListResponseWithInfo(page, info), nil
}

func (b *backend) pathApprovalRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPath(d.Get("role").(string), d.Get("id").(string)))
	if err != nil || a == nil {
		return nil, err
	}
	return &logical.Response{Data: a.data(time.Now())}, nil
}

func (b *backend) pathApprovalDecide(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	role, id, action, comment := d.Get("role").(string), d.Get("id").(string), d.Get("action").(string), d.Get("comment").(string)
	if action != "approve" && action != "deny" {
		return logical.ErrorResponse("action must be approve or deny"), nil
	}
	if err := validateText("comment", comment, maxNameLength); comment != "" && err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	if req.EntityID == "" {
		return logical.ErrorResponse("deciding on an approval request needs a Vault entity: the caller (a root or orphan token) has none, and approvers must be told apart"), nil
	}
	defer b.approvals.lock(id)()
	a, err := getJSON[approvalRequest](ctx, req.Storage, approvalPath(role, id))
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	switch {
	case a == nil:
		return logical.ErrorResponse("approval request %q does not exist under role %q", id, role), nil
	case req.EntityID == a.RequesterEntity:
		return logical.ErrorResponse("the requester cannot decide on its own approval request"), nil
	case a.state(now) != approvalPending:
		return logical.ErrorResponse("approval request %s is %s: it takes no more decisions", id, a.state(now)), nil
	case slices.ContainsFunc(a.Approvals, func(v approvalVote) bool { return v.Entity == req.EntityID }):
		return logical.ErrorResponse("this Vault entity already approved request %s: approvals must come from distinct entities", id), nil
	}
	// The role's rules as they are now, not as they were when it was asked.
	r, err := getRole(ctx, req.Storage, a.Role)
	if err != nil {
		return nil, err
	}
	if r == nil && action == "approve" {
		return logical.ErrorResponse("role %q was deleted: its approval requests can only be denied", a.Role), nil
	}
	vote := approvalVote{Entity: req.EntityID, Name: req.DisplayName, At: now.Truncate(time.Second), Comment: comment}
	live := a.ExpiresAt
	if action == "deny" {
		a.Denial, live = &vote, time.Time{}
	} else {
		a.Approvals, a.Required = append(a.Approvals, vote), r.approvalsRequired()
		if len(a.Approvals) >= a.Required {
			a.ApprovedAt, a.RedeemBy = vote.At, vote.At.Add(r.approvalRedeemTTL())
			live = a.RedeemBy
		}
	}
	if err := b.approvals.put(ctx, req.Storage, a, live); err != nil {
		return nil, err
	}
	b.Logger().Info("approval decided", "request_id", id, "action", action, "entity_id", req.EntityID, "state", a.state(now))
	return &logical.Response{Data: a.data(now)}, nil
}
