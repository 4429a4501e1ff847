package backend

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// Approval requests as stored: each under its role (approvals/<role>/<id>),
// and the role's index of live ones (approval-index/<role>), which the
// caps on what requesters can make the plugin store count.

// approvals owns the locks over approval requests; the requests and
// indexes are in the storage each caller hands in. A request's lock is
// taken before the index lock, never after it.
type approvals struct {
	// locks serialise decisions on, and redemption of, one approval
	// request.
	locks []*locksutil.LockEntry
	// indexMu serialises changes to the roles' indexes of live approval
	// requests (approval-index/<role>), which bound how many wait.
	indexMu sync.Mutex
}

func newApprovals() *approvals {
	return &approvals{locks: locksutil.CreateLocks()}
}

// lock holds request id's lock until the returned unlock.
func (ap *approvals) lock(id string) (unlock func()) {
	l := locksutil.LockForKey(ap.locks, id)
	l.Lock()
	return l.Unlock
}

// admit makes room for a new request in its role's index of live
// requests, or answers why there is none: maxLivePerRequester per entity,
// maxLivePerRole in all. Requests that ended or expired free their place.
func (ap *approvals) admit(ctx context.Context, s logical.Storage, a *approvalRequest, now time.Time) (*logical.Response, error) {
	ap.indexMu.Lock()
	defer ap.indexMu.Unlock()
	idx, err := liveApprovals(ctx, s, a.Role, now, "")
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

// put stores a request and how long it holds its place among its
// role's live requests (zero: no longer).
func (ap *approvals) put(ctx context.Context, s logical.Storage, a *approvalRequest, live time.Time) error {
	if err := putJSON(ctx, s, approvalPath(a.Role, a.ID), a); err != nil {
		return err
	}
	ap.indexMu.Lock()
	defer ap.indexMu.Unlock()
	idx, err := liveApprovals(ctx, s, a.Role, time.Now(), a.ID)
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
// without drop (an id about to be written anew). indexMu held.
func liveApprovals(ctx context.Context, s logical.Storage, role string, now time.Time, drop string) (*approvalIndex, error) {
	idx, err := getJSON[approvalIndex](ctx, s, approvalIndexPath(role))
	if err != nil || idx == nil {
		return &approvalIndex{}, err
	}
	idx.Live = slices.DeleteFunc(idx.Live, func(l liveApproval) bool { return l.ID == drop || !now.Before(l.Until) })
	return idx, nil
}

// migrate moves one request stored at approvals/<id> by plugins
// before issue 23 under its role. A copy already there (a delete that failed
// before) is newer: the old one is only deleted, never written over it, or a
// redeemed request could be redeemed again. Moved requests are not counted
// against the caps: they were asked before there were any.
func (ap *approvals) migrate(ctx context.Context, s logical.Storage, id string) error {
	defer ap.lock(id)()
	a, err := getJSON[approvalRequest](ctx, s, legacyApprovalPath(id))
	if err != nil || a == nil {
		return err
	}
	if err := validateRoleName("role", a.Role); err != nil {
		return fmt.Errorf("approval request %s: %w", id, err)
	}
	moved, err := s.Get(ctx, approvalPath(a.Role, a.ID))
	if err != nil {
		return fmt.Errorf("reading %s: %w", approvalPath(a.Role, a.ID), err)
	}
	if moved == nil {
		if err := putJSON(ctx, s, approvalPath(a.Role, a.ID), a); err != nil {
			return err
		}
	}
	if err := s.Delete(ctx, legacyApprovalPath(id)); err != nil {
		return fmt.Errorf("deleting %s: %w", legacyApprovalPath(id), err)
	}
	return nil
}

// tidy removes each role's requests ended longer ago than their
// retention, and moves requests stored before they were kept by role
// (approvals/<id>) to approvals/<role>/<id>.
func (ap *approvals) tidy(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger) error {
	names, err := s.List(ctx, approvalPrefix)
	if err != nil {
		return fmt.Errorf("listing approvals: %w", err)
	}
	for _, n := range names {
		if !strings.HasSuffix(n, "/") {
			// One request that cannot move must not hold up the others,
			// nor the rest of tidy or the mount's start.
			if err := ap.migrate(ctx, s, n); err != nil {
				log.Error("could not move an approval request under its role; it stays where it is", "request_id", n, "error", err)
			}
			continue
		}
		if _, err := tidyPrefix(ctx, s, approvalsOfRole(strings.TrimSuffix(n, "/")), func(a *approvalRequest) bool {
			return !now.Before(a.done())
		}); err != nil {
			return err
		}
	}
	return nil
}
