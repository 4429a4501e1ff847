package backend

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Approval requests as stored: each under its role (approvals/<role>/<id>),
// and the role's index of live ones (approval-index/<role>), which the
// caps on what requesters can make the plugin store count.

// admitApproval makes room for a new request in its role's index of live
// requests, or answers why there is none: maxLivePerRequester per entity,
// maxLivePerRole in all. Requests that ended or expired free their place.
func (b *backend) admitApproval(ctx context.Context, s logical.Storage, a *approvalRequest, now time.Time) (*logical.Response, error) {
	b.approvalIndexMu.Lock()
	defer b.approvalIndexMu.Unlock()
	idx, err := b.liveApprovals(ctx, s, a.Role, now, "")
	if err != nil {
		return nil, err
	}
	// Finished requests are kept a while for the record: bounded too.
	stored, err := s.List(ctx, approvalsOfRole(a.Role))
	if err != nil {
		return nil, fmt.Errorf("listing approvals: %w", err)
	}
	if len(stored) >= maxStoredPerRole {
		return logical.ErrorResponse("role %q holds %d approval requests, the most it may keep: tidy removes finished ones (expired ones an hour after, decided ones a day after)", a.Role, len(stored)), nil
	}
	mine := 0
	for _, l := range idx.Live {
		if l.Requester == a.RequesterEntity {
			mine++
		}
	}
	switch {
	case mine >= maxLivePerRequester:
		return logical.ErrorResponse("this Vault entity has %d approval requests waiting under role %q, the most one may: wait for their decisions or their expiry", mine, a.Role), nil
	case len(idx.Live) >= maxLivePerRole:
		return logical.ErrorResponse("role %q has %d approval requests waiting, the most it may: wait for their decisions or their expiry", a.Role, len(idx.Live)), nil
	}
	idx.Live = append(idx.Live, liveApproval{ID: a.ID, Requester: a.RequesterEntity, Until: a.ExpiresAt})
	return nil, putJSON(ctx, s, approvalIndexPath(a.Role), idx)
}

// putApproval stores a request and how long it holds its place among its
// role's live requests (zero: no longer).
func (b *backend) putApproval(ctx context.Context, s logical.Storage, a *approvalRequest, live time.Time) error {
	if err := putJSON(ctx, s, approvalPath(a.Role, a.ID), a); err != nil {
		return err
	}
	b.approvalIndexMu.Lock()
	defer b.approvalIndexMu.Unlock()
	idx, err := b.liveApprovals(ctx, s, a.Role, time.Now(), a.ID)
	if err != nil {
		return err
	}
	if !live.IsZero() {
		idx.Live = append(idx.Live, liveApproval{ID: a.ID, Requester: a.RequesterEntity, Until: live})
	}
	if len(idx.Live) == 0 {
		if err := s.Delete(ctx, approvalIndexPath(a.Role)); err != nil {
			return fmt.Errorf("deleting the approval index of %s: %w", a.Role, err)
		}
		return nil
	}
	return putJSON(ctx, s, approvalIndexPath(a.Role), idx)
}

// approvalIndex is a role's live approval requests: what the caps count.
type approvalIndex struct {
	Live []liveApproval `json:"live"`
}

type liveApproval struct {
	ID        string    `json:"id"`
	Requester string    `json:"requester"`
	Until     time.Time `json:"until"`
}

// liveApprovals reads a role's index without what is over by now and
// without drop (an id about to be written anew). approvalIndexMu held.
func (b *backend) liveApprovals(ctx context.Context, s logical.Storage, role string, now time.Time, drop string) (*approvalIndex, error) {
	idx, err := getJSON[approvalIndex](ctx, s, approvalIndexPath(role))
	if err != nil || idx == nil {
		return &approvalIndex{}, err
	}
	idx.Live = slices.DeleteFunc(idx.Live, func(l liveApproval) bool { return l.ID == drop || !now.Before(l.Until) })
	return idx, nil
}
