package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// credLife is what a watch saw of one credential Vault Agent rendered.
type credLife struct {
	cred     string
	seen     time.Time // first read from the file
	replaced time.Time // first read of its successor; zero while current
	expires  time.Time // expires_at from keybroker/verify
	died     time.Time // refused by keybroker/verify before expires; zero if never
	reason   string    // why it was refused
}

// overlap is how long the credential stayed usable after its successor was
// in the file: until its own expiry, or until it was refused before that.
func (c *credLife) overlap() time.Duration {
	if !c.died.IsZero() {
		return c.died.Sub(c.replaced)
	}
	return c.expires.Sub(c.replaced)
}

// renderWatch follows one rendered file and asks keybroker/verify about
// every credential that was ever in it until each one's expiry, so that a
// credential revoked before its time (by the end of the token that minted
// it) is seen, whether or not it is still in the file.
type renderWatch struct {
	vault *api.Client
	file  string
	creds []*credLife
	// stale is the longest an expired credential was seen in the file.
	stale time.Duration
}

// pollEvery is how often the file is read and the credentials verified.
const pollEvery = 250 * time.Millisecond

// run polls until done says the watch has seen enough, or fails the test
// at timeout.
func (w *renderWatch) run(t *testing.T, timeout time.Duration, done func(w *renderWatch) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !done(w) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s the watch of %s is not done: %s", timeout, w.file, w)
		}
		w.poll(t)
		time.Sleep(pollEvery)
	}
}

// poll reads the file once and verifies every credential not yet expired.
func (w *renderWatch) poll(t *testing.T) {
	now := time.Now()
	b, err := os.ReadFile(w.file)
	if cur := strings.TrimSpace(string(b)); err == nil && cur != "" {
		w.saw(t, cur, now)
	}
	if n := len(w.creds); n > 0 {
		if late := now.Sub(w.creds[n-1].expires); late > w.stale {
			w.stale = late
		}
	}
	for _, c := range w.creds {
		// expires_at has whole seconds: stop a second early, so that a
		// refusal seen here is a revocation, never the expiry itself.
		if !c.died.IsZero() || now.After(c.expires.Add(-time.Second)) {
			continue
		}
		if ok, reason, _ := w.verify(t, c.cred); !ok {
			c.died, c.reason = now, reason
		}
	}
}

// saw records cur when it is new in the file.
func (w *renderWatch) saw(t *testing.T, cur string, now time.Time) {
	if n := len(w.creds); n > 0 && w.creds[n-1].cred == cur {
		return
	}
	ok, reason, exp := w.verify(t, cur)
	if !ok {
		t.Errorf("vault agent rendered a credential keybroker/verify refuses: %s", reason)
		return
	}
	if n := len(w.creds); n > 0 {
		w.creds[n-1].replaced = now
	}
	w.creds = append(w.creds, &credLife{cred: cur, seen: now, expires: exp})
}

func (w *renderWatch) verify(t *testing.T, cred string) (ok bool, reason string, expires time.Time) {
	t.Helper()
	s := write(t, w.vault, "keybroker/verify", map[string]interface{}{"credential": cred})
	ok, _ = s.Data["valid"].(bool)
	reason, _ = s.Data["reason"].(string)
	if ok {
		var err error
		if expires, err = time.Parse(time.RFC3339, fmt.Sprint(s.Data["expires_at"])); err != nil {
			t.Fatalf("verify's expires_at: %v", err)
		}
	}
	return ok, reason, expires
}

// replacedAndOver says whether n credentials have been replaced and each of
// those has expired or died: their whole overlap has been watched.
func replacedAndOver(n int) func(w *renderWatch) bool {
	return func(w *renderWatch) bool {
		if len(w.creds) <= n {
			return false
		}
		for _, c := range w.creds[:n] {
			if c.died.IsZero() && time.Now().Before(c.expires) {
				return false
			}
		}
		return true
	}
}

// diedEarly is the first credential refused before its expiry, or nil.
func (w *renderWatch) diedEarly() *credLife {
	for _, c := range w.creds {
		if !c.died.IsZero() {
			return c
		}
	}
	return nil
}

// String is the timeline, for failure messages and the test log.
func (w *renderWatch) String() string {
	if len(w.creds) == 0 {
		return "nothing rendered"
	}
	t0 := w.creds[0].seen
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Sub(t0).Round(100 * time.Millisecond).String()
	}
	var b strings.Builder
	for i, c := range w.creds {
		fmt.Fprintf(&b, "\n  #%d rendered %s, replaced %s, expires %s", i+1, at(c.seen), at(c.replaced), at(c.expires))
		if !c.died.IsZero() {
			fmt.Fprintf(&b, ", REFUSED (%s) at %s", c.reason, at(c.died))
		}
		if !c.replaced.IsZero() {
			fmt.Fprintf(&b, ", overlap %s", c.overlap().Round(100*time.Millisecond))
		}
	}
	return b.String()
}
