package vaultserver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// A set-up write that meets a leader change is sent again until it
// succeeds; any other error ends it at once; the retries are bounded.
func TestRetryWaitsOutALeaderChange(t *testing.T) {
	old := retryBackoff
	retryBackoff = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	t.Cleanup(func() { retryBackoff = old })
	ctx := context.Background()

	// Vault's words during a leader change, as the api client reports them.
	for _, msg := range []string{
		"Error making API request.\n\nCode: 500. Errors:\n\n* leadership lost while committing log",
		"Code: 500. Errors:\n\n* local node not active but active cluster node not found",
		"Code: 503. Errors:\n\n* Vault is sealed",
	} {
		calls := 0
		err := Retry(ctx, "writing the role", func() error {
			if calls++; calls < 3 {
				return errors.New(msg)
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("%q: %v after %d calls, want success on the 3rd", msg, err, calls)
		}
	}

	calls := 0
	err := Retry(ctx, "writing the role", func() error { calls++; return errors.New("Code: 400. Errors:\n\n* unknown field(s): scope") })
	if calls != 1 || err == nil || !strings.HasPrefix(err.Error(), "writing the role: ") {
		t.Fatalf("a 400: %v after %d calls, want it at once", err, calls)
	}

	calls = 0
	err = Retry(ctx, "writing the role", func() error { calls++; return errors.New("leadership lost while committing log") })
	if calls != len(retryBackoff)+1 || err == nil || !strings.Contains(err.Error(), "leadership lost") {
		t.Fatalf("a leader that never settles: %v after %d calls", err, calls)
	}
}

// An enable retried after an attempt that was committed finds its path
// taken: done. The first attempt finding it taken is an error.
func TestEnableOnce(t *testing.T) {
	taken := errors.New("Code: 400. Errors:\n\n* path is already in use at keybroker/")
	results := []error{errors.New("leadership lost while committing log"), taken}
	enable := enableOnce(func() error { err := results[0]; results = results[1:]; return err })
	if err := enable(); err == nil {
		t.Fatal("the first attempt's error was lost")
	}
	if err := enable(); err != nil {
		t.Fatalf("a retry finding the path taken: %v", err)
	}
	if err := enableOnce(func() error { return taken })(); err == nil {
		t.Fatal("a first attempt finding the path taken is no success")
	}
}

// A connection closed mid-request is retried; a body cut short is not.
func TestLeaderChangeEOF(t *testing.T) {
	if !LeaderChange(errors.New(`Put "http://127.0.0.1:8200/v1/sys/mounts/keybroker": EOF`)) {
		t.Error("a closed connection is not retried")
	}
	if LeaderChange(errors.New("error parsing the response: unexpected EOF")) {
		t.Error("a body cut short is retried")
	}
}
