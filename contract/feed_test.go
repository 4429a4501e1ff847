package contract

import (
	"testing"
	"time"

	"github.com/keybroker/keybroker/jwtverify"
)

func TestFeedRestart(t *testing.T) {
	tests := []struct {
		name   string
		epoch  string
		cursor uint64
		page   FeedPage
		want   bool
	}{
		{"first read", "", 0, FeedPage{Epoch: "a", Last: 5}, false},
		{"same epoch, ahead", "a", 3, FeedPage{Epoch: "a", Last: 5}, false},
		{"same epoch, at the end", "a", 5, FeedPage{Epoch: "a", Last: 5}, false},
		{"new epoch", "a", 3, FeedPage{Epoch: "b", Last: 5}, true},
		{"storage went back", "a", 7, FeedPage{Epoch: "a", Last: 5}, true},
		{"first read above last", "", 7, FeedPage{Epoch: "a", Last: 5}, true},
		{"a plugin with no epoch", "", 7, FeedPage{Last: 0}, false},
	}
	for _, tt := range tests {
		if got := FeedRestart(tt.epoch, tt.cursor, &tt.page); got != tt.want {
			t.Errorf("%s: FeedRestart = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// No verifier built on jwtverify may allow more leeway than revocations are
// kept past expiry: the bound is one constant, enforced where verifiers are
// made.
func TestNoLeewayOutlastsRevocations(t *testing.T) {
	for _, tc := range []struct {
		leeway time.Duration
		ok     bool
	}{
		{RevocationGrace, true},
		{RevocationGrace + time.Second, false},
	} {
		_, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: "https://iss", Leeway: tc.leeway})
		if (err == nil) != tc.ok {
			t.Errorf("leeway %s: %v, want ok=%v", tc.leeway, err, tc.ok)
		}
	}
	exp := time.Unix(1_700_000_000, 0)
	if got := RevokedUntil(exp); got.Sub(exp) != RevocationGrace {
		t.Errorf("RevokedUntil(exp) = exp + %s, want + %s", got.Sub(exp), RevocationGrace)
	}
}
