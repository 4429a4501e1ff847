package sidecar

import (
	"context"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// localRate is this sidecar's own token bucket per credential lineage. An
// API key's lineage is its key_id; a JWT's is its subject within its role,
// so a new or refreshed token does not bring a fresh bucket. Tokens of one
// lineage may carry different limits (narrowed at mint or refresh): the
// bucket keeps the strictest it has seen.
type localRate struct {
	limiters *lru.Cache[string, *rate.Limiter]
}

func newLocalRate(size int) (*localRate, error) {
	l, err := lru.New[string, *rate.Limiter](size)
	return &localRate{limiters: l}, err
}

// allow takes one request from the bucket of the credential's lineage, or
// says how long until one is free.
func (l *localRate) allow(_ context.Context, id *identity) (time.Duration, bool) {
	key := id.lineage()
	lim, ok := l.limiters.Get(key)
	perSecond, burst := rate.Limit(id.rate.PerSecond), max(1, id.rate.Burst)
	if !ok {
		lim = rate.NewLimiter(perSecond, burst)
		if prev, found, _ := l.limiters.PeekOrAdd(key, lim); found {
			lim = prev
		}
	}
	if perSecond < lim.Limit() {
		lim.SetLimit(perSecond)
	}
	if burst < lim.Burst() {
		lim.SetBurst(burst)
	}
	if lim.Allow() {
		return 0, true
	}
	wait := (1 - lim.Tokens()) / float64(lim.Limit())
	return time.Duration(wait * float64(time.Second)), false
}

// lineage is what a credential's rate limit is kept by.
func (id *identity) lineage() string {
	switch {
	case id.lineageKey != "":
		return id.lineageKey
	case id.jwt:
		return "jwt\x00" + id.role + "\x00" + id.subject
	}
	return "key\x00" + id.id
}
