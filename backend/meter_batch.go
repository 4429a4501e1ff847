package backend

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

// Reserves and reports on one credential all change its meter, so they
// are serialised on the meter's lock, and each costs storage round trips
// (reads of the credential's record, the meter and its tenant; writes of
// the meter and the tenant) that Vault answers one after another. Rather
// than one request's round trips per turn of the lock, whichever request
// holds the lock applies every op queued on the meter meanwhile, in
// order, to one read of each, and writes each once; no op is answered
// before that write. The answers are the ones the ops would have had one
// by one, with the reads shared and the writes coalesced, so a busy
// credential costs storage per turn of its lock, not per request.

// meterOp is one reserve or report, queued on the meter it spends from.
type meterOp struct {
	// id is the credential the op names; its own meter is looked at first.
	id string
	// ctx is its request's: the op is dropped once it ends.
	ctx context.Context
	// apply applies the op to the batch's meter (nil: none is kept) and
	// tenant, or refuses it, changing nothing. Run under the meter's lock.
	apply func(b *meterBatch) error

	// Set by the batch that ran the op.
	path     string  // the meter it is queued on
	followed bool    // path is the one a link named
	state    opState // guarded by meterQueues.mu
	wake     chan struct{}
	done     bool // applied; else woken to lead
	err      error
	panicked any    // what apply panicked with, re-raised in its request
	relink   string // the meter the op's meter links to: queue it there
	again    bool   // its meter names another tenant than the batch's: queue it anew
}

// meterBatch is the state the ops of one turn of a meter's lock share.
type meterBatch struct {
	ctx  context.Context
	s    logical.Storage
	path string
	now  time.Time
	// m is the meter (nil: none is kept), t its tenant (nil: no ceiling).
	m *meter
	t *tenantEntry
	// changed says an op changed m, which is then stored.
	changed bool
	// absent says storage holds no meter at path, capless that it holds
	// one older than max_cost_per_request (see complete).
	absent, capless bool
	// keys are the key records read in this batch, by key_id (nil: none),
	// revokedJTIs whether the JWTs looked up are revoked: each read once
	// for all the ops of the batch.
	keys        map[string]*keyEntry
	revokedJTIs map[string]bool
}

// meterQueues holds the ops waiting for each meter. One request at a
// time leads a meter's queue: it takes the meter's lock, applies what is
// queued, wakes the requests whose ops it applied, and hands the lead to
// the first op queued meanwhile. A request whose op another applied so
// never waits for the lock itself.
type meterQueues struct {
	mu     sync.Mutex
	byPath map[string]*meterQueue
}

type meterQueue struct {
	ops []*meterOp
}

// opState is where an op is in its meter's queue: only a queued op can
// be withdrawn; one handed the lead must lead, one taken is answered by
// the batch that took it.
type opState uint8

const (
	opQueued opState = iota
	opLeading
	opTaken
)

// join queues op on op.path, and says whether its request leads the queue
// (no other does).
func (qs *meterQueues) join(op *meterOp) (lead bool) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if qs.byPath == nil {
		qs.byPath = map[string]*meterQueue{}
	}
	q := qs.byPath[op.path]
	op.state = opQueued
	if q == nil {
		q, lead = &meterQueue{}, true
		qs.byPath[op.path] = q
		op.state = opLeading
	}
	q.ops = append(q.ops, op)
	return lead
}

// withdraw takes op out of its queue, and says whether it did: not when
// op was handed the lead or taken into a batch meanwhile.
func (qs *meterQueues) withdraw(op *meterOp) bool {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if op.state != opQueued {
		return false
	}
	q := qs.byPath[op.path]
	q.ops = slices.DeleteFunc(q.ops, func(o *meterOp) bool { return o == op })
	return true
}

// take empties the queue of path, for its leader.
func (qs *meterQueues) take(path string) []*meterOp {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q := qs.byPath[path]
	ops := q.ops
	q.ops = nil
	for _, op := range ops {
		op.state = opTaken
	}
	return ops
}

// next is the op whose request leads the queue of path next: the first
// queued since the leader took it; nil (the queue dropped) when none is.
func (qs *meterQueues) next(path string) *meterOp {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q := qs.byPath[path]
	if len(q.ops) == 0 {
		delete(qs.byPath, path)
		return nil
	}
	q.ops[0].state = opLeading
	return q.ops[0]
}

// run applies op to the meter credential op.id spends from, and returns
// its error. When run returns without ctx's error, op has been applied (by
// this request or by another's) and its changes stored. A request whose
// context ends while its op waits in the queue withdraws it; once taken
// into a batch, it waits for the batch, whose storage calls end when
// every request in it has ended.
func (mt *meters) run(ctx context.Context, s logical.Storage, op *meterOp) error {
	op.ctx, op.path, op.wake = ctx, meterPath(op.id), make(chan struct{}, 1)
	for {
		if !mt.queues.join(op) && !mt.wait(op) {
			return ctx.Err()
		}
		if !op.done {
			mt.lead(s, op)
		}
		if op.panicked != nil {
			panic(op.panicked) // for guard to answer 500 and log it
		}
		if op.relink == "" && !op.again {
			return op.err
		}
		if op.relink != "" {
			op.path, op.followed = meterPath(op.relink), true
		}
		op.relink, op.again, op.done = "", false, false
	}
}

// wait waits until op is applied or handed the lead, and says whether it
// was: false when op's context ended first and op was withdrawn.
func (mt *meters) wait(op *meterOp) bool {
	select {
	case <-op.wake:
		return true
	case <-op.ctx.Done():
		if mt.queues.withdraw(op) {
			return false
		}
		<-op.wake // taken or handed the lead meanwhile
		return true
	}
}

// lead applies what is queued on the meter own.path (own among them),
// under its lock, and hands the queue on.
func (mt *meters) lead(s logical.Storage, own *meterOp) {
	path := own.path
	l := locksutil.LockForKey(mt.meterLocks, path)
	l.Lock()
	ops := mt.queues.take(path)
	ctx, cancel := batchContext(ops)
	panicked := mt.runBatchSafely(ctx, s, path, ops)
	cancel()
	l.Unlock()
	for _, op := range ops {
		op.done = true
		if op != own {
			op.wake <- struct{}{}
		}
	}
	if next := mt.queues.next(path); next != nil {
		next.wake <- struct{}{}
	}
	if panicked != nil {
		panic(panicked) // for guard to answer this request 500 and log it
	}
}

// batchContext is the context of the storage calls of ops' batch. It
// outlives any one op's context, as the others' ops are in the batch, but
// ends when all of theirs have: no one waits for the answers then, and a
// storage call that does not return would hold the meter (and its
// tenant) forever.
func batchContext(ops []*meterOp) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ops[0].ctx))
	var left atomic.Int64
	left.Store(int64(len(ops)))
	stops := make([]func() bool, len(ops))
	for i, op := range ops {
		stops[i] = context.AfterFunc(op.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// runBatchSafely is runBatch, recovering a panic outside the ops (in a
// read or write) so that the lock is let go and no queued request is
// left waiting: the ops fail.
func (mt *meters) runBatchSafely(ctx context.Context, s logical.Storage, path string, ops []*meterOp) (panicked any) {
	defer func() {
		if panicked = recover(); panicked != nil {
			failFrom(ops, 0, errBatchInternal(path))
		}
	}()
	mt.runBatch(ctx, s, path, ops)
	return nil
}

// runBatch applies ops, in order, to the meter at path and its tenant,
// and stores what they changed. An op that panics fails, and so do the
// ops after it, which were not applied; when ops before it changed
// anything, they are applied again without it, to what storage holds, so
// that no part of its change is stored.
func (mt *meters) runBatch(ctx context.Context, s logical.Storage, path string, ops []*meterOp) {
	for n := len(ops); n > 0; {
		n = mt.applyBatch(ctx, s, path, ops[:n])
	}
}

// applyBatch is one try of runBatch. It returns 0 when done, else how
// many ops (those before one that panicked) are to be applied again.
func (mt *meters) applyBatch(ctx context.Context, s logical.Storage, path string, ops []*meterOp) (again int) {
	b := &meterBatch{ctx: ctx, s: s, path: path}
	err := b.load(ops)
	if err == nil && b.m != nil && b.m.Link != "" {
		// A credential spending from another's meter (a rotated key's
		// successor, a JWT of a refresh family) is queued there; a link
		// is followed once, as loadMeter does.
		relink(ops, b.m.Link)
	}
	if err == nil && b.tenant() != "" {
		defer mt.lockTenant(b.tenant())()
	}
	// now is read holding the locks of what it rolls: one read before
	// another meter's batch rolled the tenant on would be a period
	// behind it.
	b.now = time.Now().UTC()
	if err == nil && b.tenant() != "" {
		b.t, err = tenantFor(ctx, s, b.tenant(), b.now)
	}
	if err != nil {
		failFrom(ops, 0, err)
		return 0
	}
	var t0 pool
	if b.t != nil {
		t0 = pool{PeriodStart: b.t.PeriodStart, Used: b.t.Used, Held: maps.Clone(b.t.Held)}
	}
	// first is the first op that changed the meter: the answers of those
	// before it, which changed nothing, stand whatever happens to the
	// writes; those from it on may rest on its change.
	first, tenant := len(ops), b.tenant()
	for i, op := range ops {
		if op.relink != "" {
			continue
		}
		if op.err = b.complete(op.id); op.err != nil {
			continue
		}
		if b.tenant() != tenant {
			// A meter made from another key, of another tenant: the
			// batch holds one tenant's lock and entry.
			op.again = true
			continue
		}
		if !b.apply(op) {
			failFrom(ops[i+1:], 0, errBatchInternal(path))
			if first < i {
				return i
			}
			return 0
		}
		if b.changed && first == len(ops) {
			first = i
		}
	}
	if b.t != nil && !t0.same(b.t.pool) {
		err = putJSON(ctx, s, tenantPrefix+b.m.Tenant, b.t)
	}
	if err == nil && b.changed {
		err = putJSON(ctx, s, path, b.m)
	}
	if err != nil {
		failFrom(ops, first, err)
	}
	return 0
}

// apply applies op to the batch, unless its request has ended (it would
// be granted with no one to be told), and says whether it returned: a
// panic fails op, and is re-raised in op's own request for guard to
// answer 500 and log.
func (b *meterBatch) apply(op *meterOp) (returned bool) {
	defer func() {
		if p := recover(); p != nil {
			op.panicked, op.err = p, errBatchInternal(b.path)
		}
	}()
	if op.err = op.ctx.Err(); op.err == nil {
		op.err = op.apply(b)
	}
	return true
}

func errBatchInternal(path string) error {
	return fmt.Errorf("internal error applying budget requests to %s", path)
}

// relink sends the ops that came to their own meter and found a link
// there to the meter it links to; the batch leaves them be.
func relink(ops []*meterOp, link string) {
	for _, op := range ops {
		if !op.followed {
			op.relink = link
		}
	}
}

// failFrom fails the ops from the from'th on (refusals too: they may rest
// on a change that was not stored) but those sent on to another meter.
func failFrom(ops []*meterOp, from int, err error) {
	for _, op := range ops[from:] {
		if op.relink == "" && !op.again {
			op.err = err
		}
	}
}

// same says whether p and q account the same (their expired holds aside,
// which roll drops on every read).
func (p pool) same(q pool) bool {
	return p.PeriodStart.Equal(q.PeriodStart) && p.Used == q.Used && maps.Equal(p.Held, q.Held)
}

// load reads the meter at path, and completes it for the first op.
func (b *meterBatch) load(ops []*meterOp) error {
	m, err := getJSON[meter](b.ctx, b.s, b.path)
	if err != nil {
		return err
	}
	b.m, b.absent, b.capless = m, m == nil, m != nil && m.Link == "" && m.MaxCost == 0
	return b.complete(ops[0].id)
}

// complete completes the meter for an op on credential id as loadMeter
// does for id alone: an API key's meter made from its key the first time
// it is needed, the cap on reports of an older meter taken from its key.
// Ops on one meter may name different credentials (a rotated key and its
// successors), so while no op has changed the meter each gets its own;
// once one has, the meter is as storage will hold it, and left be.
func (b *meterBatch) complete(id string) error {
	if b.changed || (!b.absent && !b.capless) {
		return nil
	}
	var k *keyEntry
	if apikey.ValidateID(id) {
		var err error
		if k, err = b.key(id); err != nil {
			return err
		}
	}
	switch {
	case b.capless:
		// A meter stored before it kept max_cost_per_request: the cap
		// on reports is the key's (saved with the meter).
		b.m.MaxCost = 0
		if k != nil {
			b.m.MaxCost = k.MaxCost
		}
	case k == nil || (k.Budget == 0 && k.Tenant == ""):
		b.m = nil // not metered
	default:
		b.m = meterFromKey(k)
	}
	return nil
}

// tenant is the name of the tenant of the batch's meter ("": none).
func (b *meterBatch) tenant() string {
	if b.m == nil {
		return ""
	}
	return b.m.Tenant
}

// key is the record of key id (nil: none), read once per batch.
func (b *meterBatch) key(id string) (*keyEntry, error) {
	if k, ok := b.keys[id]; ok {
		return k, nil
	}
	k, err := getKey(b.ctx, b.s, id)
	if err != nil {
		return nil, err
	}
	if b.keys == nil {
		b.keys = map[string]*keyEntry{}
	}
	b.keys[id] = k
	return k, nil
}
