package backend

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

// keyIDSkew is how far apart two nodes' clocks may be: for this long after
// a node starts to mint, its key_ids are checked against storage too.
const keyIDSkew = 30 * time.Second

// keyIDLedger hands out key_ids no key has, without reading storage for
// each. A key_id is its mint second's stamp and 7 random base62 characters
// (41.7 bits): ids of different seconds never collide, and two of the same
// second rarely do (about once in three weeks at a sustained 2,000 mints a
// second), but a collision would overwrite another key's entry, so it must
// not happen. Every id this node mints is recorded under its second, the
// last two seconds kept; an id already recorded is drawn again. That makes
// a collision impossible by construction for the ids stamped with a second
// in which only this node minted:
//   - one node writes at a time: mints are writes, which only the active
//     node of the primary cluster runs (standbys and performance standbys
//     forward them);
//   - a leadership change re-creates the backend on the new active node,
//     whose ledger starts empty: until keyIDSkew after it started (the old
//     active node's clock may have been ahead), the ids it mints are also
//     looked up in storage, as before. A plugin restart on the same node
//     starts empty too, and keyIDSkew must cover that node's own clock
//     stepping back across it (the ids minted before the restart are
//     stamped with seconds its clock may show again after);
//   - an invalidation of a keys/ entry says another node writes keys (a
//     performance standby hears of the active node's mints this way): the
//     ledger again checks storage until keyIDSkew after the last one;
//   - a stamp older than the two seconds held (the clock stepped back) is
//     looked up in storage, and recorded too (the ids of the latest such
//     second), so two mints of that second cannot both draw one id, look
//     it up before either writes, and the second overwrite the first.
//
// The stamp repeats every 29 years (apikey.stampCycle); no key lives that
// long (leases are capped at the mount's max_lease_ttl, and tidy removes
// expired keys).
type keyIDLedger struct {
	// trustFrom is the unix second from which this node's record is
	// complete: stamps before it are looked up in storage too.
	trustFrom atomic.Int64

	mu        sync.Mutex
	second    int64               // the newest second recorded
	cur, prev map[string]struct{} // the ids stamped with second, second-1
	// back holds the ids stamped with backSec, a second older than those
	// two (the clock stepped back); emptied when another such second comes.
	backSec int64
	back    map[string]struct{}
}

func newKeyIDLedger(now time.Time) *keyIDLedger {
	l := &keyIDLedger{}
	l.distrust(now)
	return l
}

// distrust says another node may have minted lately: ids are looked up in
// storage until keyIDSkew from now.
func (l *keyIDLedger) distrust(now time.Time) {
	l.trustFrom.Store(now.Add(keyIDSkew).Unix() + 1)
}

// claim records id, stamped with second sec. fresh: no key of this node's
// record has it; sure: the record is complete for sec, so fresh means no
// key anywhere has it (else storage must be asked).
func (l *keyIDLedger) claim(id string, sec int64) (fresh, sure bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sec > l.second {
		if sec == l.second+1 {
			l.prev = l.cur
		} else {
			l.prev = map[string]struct{}{}
		}
		l.cur, l.second, l.back = map[string]struct{}{}, sec, nil
	}
	ids, sure := l.cur, sec >= l.trustFrom.Load()
	switch sec {
	case l.second:
	case l.second - 1:
		ids = l.prev
	default: // the clock stepped back past what is held: storage is asked too
		if sec != l.backSec || l.back == nil {
			l.backSec, l.back = sec, map[string]struct{}{}
		}
		ids, sure = l.back, false
	}
	if _, taken := ids[id]; taken {
		return false, true
	}
	ids[id] = struct{}{}
	return true, sure
}

// create generates a key whose key_id no key has, and sets k's id and
// hash to it; it returns the key.
func (l *keyIDLedger) create(ctx context.Context, s logical.Storage, prefix string, k *keyEntry) (string, error) {
	for attempt := 0; attempt < 3; attempt++ {
		now := time.Now()
		key, id, err := apikey.GenerateAt(nil, prefix, now)
		if err != nil {
			return "", fmt.Errorf("generating key: %w", err)
		}
		fresh, sure := l.claim(id, now.Unix())
		if !fresh {
			continue
		}
		if !sure {
			existing, err := s.Get(ctx, apiKeyPath(id))
			if err != nil {
				return "", fmt.Errorf("checking key_id: %w", err)
			}
			if existing != nil {
				continue
			}
		}
		h := apikey.Hash(key)
		k.ID, k.Hash = id, h[:]
		return key, nil
	}
	// Three collisions in a row of ids stamped with the same second, each with
	// 41 random bits, mean the randomness is broken.
	return "", fmt.Errorf("generating key: key_id collided three times")
}
