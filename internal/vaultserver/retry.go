package vaultserver

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// On a Raft cluster a write can fail because leadership moved while it was
// committed ("leadership lost while committing log") or while a standby
// looked for the new active node; the same write a moment later succeeds.
// Set-up (the plugin's mount, policies, AppRoles, make dev's role) goes
// through Retry so that a leader change during start-up, which a loaded
// machine makes likely, is waited out instead of ending the start. Each
// write retried must be one that may be sent twice: the first may have
// been committed before the error. (An AppRole's secret-id write retried
// may leave an unused secret_id behind: harmless in a dev or test Vault.)

// leaderChangeErrors are the words Vault answers with while its active node
// changes.
var leaderChangeErrors = []string{
	"leadership lost",
	"leadership change",
	"local node not active but active cluster node not found",
	"node not active",
	"no active node",
	"Vault is sealed",
	"standby",
	"connection refused",
	// The connection closed mid-request (net/http's `Put "...": EOF`), not
	// a JSON body cut short ("unexpected EOF"), which a retry does not mend.
	": EOF",
}

// LeaderChange says whether err is one a write meets while the cluster's
// active node changes.
func LeaderChange(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, s := range leaderChangeErrors {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// retryBackoff is the wait before each retry: about 25s in all, longer
// than Raft's election with performance_multiplier = 1 takes.
var retryBackoff = []time.Duration{
	250 * time.Millisecond, 500 * time.Millisecond, time.Second,
	2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second,
}

// Retry runs write until it succeeds, fails for another reason than a
// leader change, or the backoff is spent; what names the write in the
// error.
func Retry(ctx context.Context, what string, write func() error) error {
	err := write()
	for _, wait := range retryBackoff {
		if !LeaderChange(err) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (gave up retrying: %v)", what, err, ctx.Err())
		case <-time.After(wait):
		}
		err = write()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
