package backend

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The ledger refuses an id it recorded in the same second or the one
// before, and says when storage must be asked as well: in the warm-up
// after a start or another node's write of a key, and for a second older
// than those it holds.
func TestKeyIDLedger(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := newKeyIDLedger(now)
	sec := now.Unix()
	if fresh, sure := l.claim("aaaaaaaaaaaa", sec); !fresh || sure {
		t.Fatalf("in the warm-up: fresh %v sure %v; want fresh, not sure", fresh, sure)
	}
	later := sec + int64(keyIDSkew/time.Second) + 1
	for _, tc := range []struct {
		id          string
		sec         int64
		fresh, sure bool
	}{
		{"bbbbbbbbbbbb", later, true, true},
		{"bbbbbbbbbbbb", later, false, true},    // the same id, the same second
		{"cccccccccccc", later + 1, true, true}, // the next second
		{"bbbbbbbbbbbb", later, false, true},    // still held: the second before
		{"bbbbbbbbbbbb", later + 1, true, true}, // another second: another id
		{"dddddddddddd", later - 1, true, false},
		{"eeeeeeeeeeee", later + 5, true, true}, // a jump: nothing held for the seconds between
		{"ffffffffffff", later + 4, true, true},
		{"ffffffffffff", later + 4, false, true},
		{"cccccccccccc", later + 1, true, false}, // the clock stepped back: ask storage
		{"cccccccccccc", later + 1, false, true}, // and recorded: drawn again
		{"hhhhhhhhhhhh", later + 1, true, false}, //
		{"iiiiiiiiiiii", later - 3, true, false}, // stepped back further
		{"iiiiiiiiiiii", later - 3, false, true}, //
		{"cccccccccccc", later + 1, true, false}, // that second is no longer held: ask storage
		{"jjjjjjjjjjjj", later + 5, true, true},  // the clock again at the newest second
		{"jjjjjjjjjjjj", later + 6, true, true},  //
	} {
		if fresh, sure := l.claim(tc.id, tc.sec); fresh != tc.fresh || sure != tc.sure {
			t.Errorf("claim(%s, %d): fresh %v sure %v; want %v %v", tc.id, tc.sec-later, fresh, sure, tc.fresh, tc.sure)
		}
	}
	l.distrust(time.Unix(later+5, 0))
	if _, sure := l.claim("gggggggggggg", later+5); sure {
		t.Fatal("sure right after another node wrote a key")
	}
}

// A key_id the ledger has not recorded is looked up in storage while the
// ledger is not sure; an invalidation of a key (another node's write) makes
// it unsure again.
func TestKeyIDLedgerAsksStorage(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	c := newCountingStorage(e.storage)
	e.storage = c
	e.mint("web", nil)
	if c.n("get", keyPrefix) != 1 {
		t.Fatalf("a mint in the warm-up: %v; want its key_id looked up", c.calls)
	}
	e.b.keyIDs.trustFrom.Store(0)
	c.reset()
	e.mint("web", nil)
	if c.n("get", keyPrefix) != 0 {
		t.Fatalf("a mint past the warm-up: %v; want no lookup", c.calls)
	}
	e.b.invalidate(context.Background(), apiKeyPath("AAAAAAAAAAAA"))
	c.reset()
	e.mint("web", nil)
	if c.n("get", keyPrefix) != 1 {
		t.Fatalf("a mint after another node wrote a key: %v; want its key_id looked up", c.calls)
	}
	e.b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage})
	if e.b.keyIDs.trustFrom.Load() <= time.Now().Unix() {
		t.Fatal("initialize (this node starts to write) left the ledger sure")
	}
}

// Concurrent claims of one id in one second: one is fresh.
func TestKeyIDLedgerOneConcurrentClaimWins(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, sec := range []int64{now.Unix() + 100, now.Unix() + 99, now.Unix() + 90} {
		l := newKeyIDLedger(now)
		l.claim("aaaaaaaaaaaa", now.Unix()+100)
		var fresh atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if f, _ := l.claim("xxxxxxxxxxxx", sec); f {
					fresh.Add(1)
				}
			}()
		}
		wg.Wait()
		if fresh.Load() != 1 {
			t.Fatalf("second %d: %d claims of one id were fresh; want one", sec-now.Unix(), fresh.Load())
		}
	}
}

// The ledger holds two seconds' ids and one stepped-back second's, however
// long mints go on.
func TestKeyIDLedgerBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := newKeyIDLedger(now)
	for s := int64(0); s < 50; s++ {
		for i := 0; i < 200; i++ {
			l.claim(fmt.Sprintf("%012d", s*1000+int64(i)), now.Unix()+s)
			l.claim(fmt.Sprintf("b%011d", s*1000+int64(i)), now.Unix()+s-10)
		}
	}
	if n := len(l.cur) + len(l.prev) + len(l.back); n > 600 {
		t.Fatalf("ledger holds %d ids; want at most three seconds' (600)", n)
	}
}
