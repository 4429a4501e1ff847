package backend

import (
	"cmp"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// feedReads shares the reads of a feed's pages between its readers: every
// reader of one wake generation asking for the same page (the same cursor,
// epoch and filter) gets the answer of one storage read, whether it asks
// while that read is out (singleflight) or after it (the cache).
//
// A fleet of verifiers that are up to date wait at the same cursor; an
// append wakes all of them at once, and each asks again. Sharing only the
// reads in flight leaves the ones that arrive after the first read ended,
// which with thousands of waiters on two cores is most of them, each
// reading storage on its own. Held reads that time out come back one by
// one, seconds apart, at the same cursor: with the cache they cost no
// storage read either.
//
// A page read in generation gen answers every reader that took gen (see
// feedWaiters.next): the read began after the wake that made gen, so after
// every append that reader could know of. A page is never kept across a
// wake, and at most feedShareMaxAge, a bound on what a change that wakes
// no reader (none is known) could leave unseen.
type feedReads struct {
	flight singleflight.Group

	mu    sync.Mutex
	gen   uint64
	pages map[string]sharedPage
	// maxAge, when set, replaces feedShareMaxAge: tests whose goroutines
	// a loaded machine may start over more than a second set it longer.
	maxAge time.Duration
}

type sharedPage struct {
	v  interface{}
	at time.Time // when its read began
}

const (
	// feedShareMaxAge bounds how long a page answers readers of its
	// generation.
	feedShareMaxAge = time.Second
	// feedShareMaxPages bounds the pages kept for one generation: readers
	// at different cursors or with different filters each have their own,
	// and a page of key records may hold some MiB (records and their
	// encoding). The page every reader up to date shares comes first.
	feedShareMaxPages = 64
)

// read returns the page of key for a reader of generation gen: kept, or
// read by fn once for every reader asking at the same time.
func (r *feedReads) read(key string, gen uint64, fn func() (interface{}, error)) (interface{}, error) {
	if v, ok := r.kept(key, gen); ok {
		return v, nil
	}
	v, err, _ := r.flight.Do(key+"\x00"+uitoa(gen), func() (interface{}, error) {
		began := time.Now()
		v, err := fn()
		if err == nil {
			r.keep(key, gen, v, began)
		}
		return v, err
	})
	return v, err
}

func (r *feedReads) kept(key string, gen uint64) (interface{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pages[key]
	if !ok || r.gen != gen || time.Since(p.at) >= cmp.Or(r.maxAge, feedShareMaxAge) {
		return nil, false
	}
	return p.v, true
}

func (r *feedReads) keep(key string, gen uint64, v interface{}, began time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case gen < r.gen:
		return // a later wake came while it was read: older than what is kept
	case gen > r.gen || r.pages == nil:
		r.gen, r.pages = gen, make(map[string]sharedPage)
	case len(r.pages) >= feedShareMaxPages:
		return
	}
	r.pages[key] = sharedPage{v, began}
}

func uitoa(n uint64) string { return strconv.FormatUint(n, 10) }
