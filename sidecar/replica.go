package sidecar

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// keyReplica holds a record of every live API key the sidecar subscribes
// to, from keybroker/key-records, so that it verifies keys without asking
// Vault: the key_id finds the record, the key's SHA-256 must equal the
// record's. It is used only while it is confirmed current within max_stale
// (see usable); otherwise keys go to keybroker/verify as before.
type keyReplica struct {
	mu      sync.RWMutex
	records map[[apikey.IDLength]byte]*replicaRecord
	// shapes are what many keys share (role, tenant, scopes, bounds,
	// limits), held once.
	shapes  map[string]*keyShape
	metered map[string]bool // tenants with a budget ceiling
	// suspendedRoles: their keys are refused, whatever their records say
	// (a role's suspension changes no record: see the plugin's
	// path_role_suspend.go).
	suspendedRoles map[string]bool
	gen            uint32 // the snapshot being read, for sweeping

	synced atomic.Bool
	// currentAt is when the replica was last confirmed current (UnixNano);
	// pollUntil, while a long poll is out, is until when that poll vouches
	// for it: the plugin answers at once when a key changes, so an
	// unanswered poll within its wait means nothing changed.
	currentAt, pollUntil atomic.Int64
	// failing: the last feed read failed; decisions are then degraded.
	failing atomic.Bool
}

// replicaRecord is one key. Records are replaced, never changed, so a
// reader may use one after the lock is released.
type replicaRecord struct {
	hash    [sha256.Size]byte
	expires int64 // Unix seconds
	revoked bool
	// suspended: refused until resumed; replacedBy: rotated to this
	// key_id, working until expires (the end of its grace).
	suspended  bool
	replacedBy string
	gen        uint32
	shape      *keyShape
}

type keyShape struct {
	refs         int // records that use it, under keyReplica.mu
	key          string
	role, tenant string
	scopes       []string
	cidrs        []netip.Prefix
	budget       *jwtverify.Budget // the key's own limits
	rate         *jwtverify.RateLimit
	// jkt binds the key (DPoP). Bound keys each have a shape of their
	// own; unbound ones pay nothing for it.
	jkt string
}

// expiredRecordGrace is how long a record stays after its key expired, so
// the answer is "expired" rather than "invalid" (the plugin's snapshot
// keeps them as long).
const expiredRecordGrace = 5 * time.Minute

func newKeyReplica() *keyReplica {
	return &keyReplica{records: map[[apikey.IDLength]byte]*replicaRecord{}, shapes: map[string]*keyShape{}, metered: map[string]bool{}}
}

func replicaKey(id string) (k [apikey.IDLength]byte) {
	copy(k[:], id)
	return k
}

// usable says whether decisions may rely on the replica at now: a whole
// snapshot was read and it was confirmed current within maxStale.
func (r *keyReplica) usable(now time.Time, maxStale time.Duration) bool {
	return r.synced.Load() && now.Sub(r.currentAsOf(now)) < maxStale
}

func (r *keyReplica) currentAsOf(now time.Time) time.Time {
	// pollUntil first: the follow loop stores currentAt before it clears
	// pollUntil, so no reader sees neither.
	until := r.pollUntil.Load()
	at := r.currentAt.Load()
	if until != 0 {
		at = max(at, min(now.UnixNano(), until))
	}
	return time.Unix(0, at)
}

// lookup returns the record of key_id id, whether the key is metered, and
// whether it is suspended, on its own or with its role.
func (r *keyReplica) lookup(id string) (rec *replicaRecord, metered, suspended bool) {
	k := replicaKey(id)
	r.mu.RLock()
	rec = r.records[k]
	if rec != nil {
		metered = rec.shape.budget != nil && (rec.shape.budget.Units > 0 || r.metered[rec.shape.tenant])
		suspended = rec.suspended || r.suspendedRoles[rec.shape.role]
	}
	r.mu.RUnlock()
	return rec, metered, suspended
}

// identity is who a key with record rec is, as keybroker/verify would say.
// id must not be a substring of the key: the identity outlives the request.
func (rec *replicaRecord) identity(id string, metered bool) *identity {
	sh := rec.shape
	ident := &identity{id: id, subject: "key:" + id, role: sh.role, tenant: sh.tenant, scopes: sh.scopes, cidrs: sh.cidrs,
		expiresAt: time.Unix(rec.expires, 0), rate: sh.rate, jkt: sh.jkt, replacedBy: rec.replacedBy}
	if metered {
		ident.budget = sh.budget
	}
	if ident.rate != nil {
		ident.lineageKey = ident.lineage()
	}
	return ident
}

var errBadRecord = errors.New("bad key record")

// apply stores the records of a page: a gone record removes the key, and a
// record the sidecar cannot read removes it too, so that a bound it cannot
// parse never becomes no bound. It returns how many it could not read.
func (r *keyReplica) apply(recs []contract.KeyRecord, gen uint32) (bad int) {
	parsed := make([]*replicaRecord, len(recs))
	ids := make([]string, len(recs))
	for i := range recs {
		rec, err := parseRecord(&recs[i])
		if err != nil {
			bad++
		}
		parsed[i], ids[i] = rec, recs[i].KeyID
	}
	r.applyParsed(ids, parsed, gen)
	return bad
}

// applyParsed stores records parsed outside the lock: parsed[i] is the
// record of key_id ids[i], nil to remove it. A record's shape is shared
// with the records held that have the same (its key).
func (r *keyReplica) applyParsed(ids []string, parsed []*replicaRecord, gen uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rec := range parsed {
		k := replicaKey(ids[i])
		r.removeLocked(k)
		if rec == nil {
			continue
		}
		if sh := r.shapes[rec.shape.key]; sh != nil {
			rec.shape = sh
		} else {
			r.shapes[rec.shape.key] = rec.shape
		}
		rec.shape.refs++
		rec.gen = gen
		r.records[k] = rec
	}
}

// removeLocked drops the record of k, and its shape when no other record
// uses it. The caller holds mu.
func (r *keyReplica) removeLocked(k [apikey.IDLength]byte) {
	old := r.records[k]
	if old == nil {
		return
	}
	delete(r.records, k)
	if old.shape.refs--; old.shape.refs == 0 {
		delete(r.shapes, old.shape.key)
	}
}

// parseRecord turns a feed record into a replica record, its shape keyed;
// a gone record is nil.
func parseRecord(kr *contract.KeyRecord) (*replicaRecord, error) {
	if kr.Gone || !apikey.ValidateID(kr.KeyID) {
		if !kr.Gone {
			return nil, fmt.Errorf("%w: key_id", errBadRecord)
		}
		return nil, nil
	}
	if kr.ReplacedBy != "" && !apikey.ValidateID(kr.ReplacedBy) {
		return nil, fmt.Errorf("%w: replaced_by", errBadRecord)
	}
	rec := &replicaRecord{revoked: kr.Revoked, suspended: kr.Suspended, replacedBy: kr.ReplacedBy}
	if len(kr.Hash) != 2*sha256.Size {
		return nil, fmt.Errorf("%w: hash", errBadRecord)
	}
	if _, err := hex.Decode(rec.hash[:], []byte(kr.Hash)); err != nil {
		return nil, fmt.Errorf("%w: hash", errBadRecord)
	}
	exp, err := time.Parse(time.RFC3339, kr.ExpiresAt)
	if err != nil {
		return nil, fmt.Errorf("%w: expires_at", errBadRecord)
	}
	rec.expires = exp.Unix()
	if rec.shape, err = parseShape(kr); err != nil {
		return nil, err
	}
	return rec, nil
}

// parseShape is the shape of record kr, keyed.
func parseShape(kr *contract.KeyRecord) (*keyShape, error) {
	if kr.JKT != "" && !jwtverify.ValidJKT(kr.JKT) {
		return nil, fmt.Errorf("%w: jkt", errBadRecord)
	}
	sh := &keyShape{role: kr.Role, tenant: kr.Tenant, scopes: kr.Scopes, budget: kr.Budget, rate: kr.RateLimit, jkt: kr.JKT, key: shapeKey(kr)}
	for _, c := range kr.BoundCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%w: bound_cidrs", errBadRecord)
		}
		sh.cidrs = append(sh.cidrs, p)
	}
	return sh, nil
}

// shapeKey says what makes two keys' shapes the same.
func shapeKey(kr *contract.KeyRecord) string {
	var b strings.Builder
	for _, s := range []string{kr.Role, kr.Tenant, strings.Join(kr.Scopes, "\x01"), strings.Join(kr.BoundCIDRs, "\x01")} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	if bu := kr.Budget; bu != nil {
		fmt.Fprintf(&b, "b%d/%d/%d", bu.Units, bu.Period, bu.MaxCost)
	}
	b.WriteByte(0)
	if rl := kr.RateLimit; rl != nil {
		b.WriteString("r" + strconv.FormatFloat(rl.PerSecond, 'g', -1, 64) + "/" + strconv.Itoa(rl.Burst))
	}
	b.WriteByte(0)
	b.WriteString(kr.JKT)
	return b.String()
}

// setMetered replaces the set of tenants with a budget ceiling.
func (r *keyReplica) setMetered(tenants []string) {
	m := setOf(tenants)
	r.mu.Lock()
	r.metered = m
	r.mu.Unlock()
}

// setSuspendedRoles replaces the set of suspended roles.
func (r *keyReplica) setSuspendedRoles(roles []string) {
	m := setOf(roles)
	r.mu.Lock()
	r.suspendedRoles = m
	r.mu.Unlock()
}

// setOf is names as a set, built before the replica's lock is taken.
func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// newGen starts reading a snapshot.
func (r *keyReplica) newGen() uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	return r.gen
}

// sweep removes the records a whole snapshot of generation gen did not
// have (keys gone while the sidecar was not following), and the shapes no
// record uses.
func (r *keyReplica) sweep(gen uint32) {
	r.removeWhere(func(rec *replicaRecord) bool { return rec.gen != gen })
}

// prune removes the records of keys expired more than expiredRecordGrace ago.
func (r *keyReplica) prune(now time.Time) {
	limit := now.Add(-expiredRecordGrace).Unix()
	r.removeWhere(func(rec *replicaRecord) bool { return rec.expires < limit })
}

// removeWhere removes the records drop says to: found under the read lock,
// so that lookups go on while a million records are looked through, then
// removed a batch at a time under the write lock, each checked again (it
// may have been replaced meanwhile).
func (r *keyReplica) removeWhere(drop func(*replicaRecord) bool) {
	var found [][apikey.IDLength]byte
	r.mu.RLock()
	for k, rec := range r.records {
		if drop(rec) {
			found = append(found, k)
		}
	}
	r.mu.RUnlock()
	const batch = 1000
	for len(found) > 0 {
		n := min(batch, len(found))
		r.mu.Lock()
		for _, k := range found[:n] {
			if rec := r.records[k]; rec != nil && drop(rec) {
				r.removeLocked(k)
			}
		}
		r.mu.Unlock()
		found = found[n:]
	}
}

func (r *keyReplica) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.records)
}

// keyFilter is what part of the keys the sidecar subscribes to.
type keyFilter struct{ roles, tenants []string }

func (f keyFilter) set() bool { return len(f.roles) > 0 || len(f.tenants) > 0 }

// passes says whether a key of role and tenant is one the sidecar serves.
func (f keyFilter) passes(role, tenant string) bool {
	return (len(f.roles) == 0 || slices.Contains(f.roles, role)) &&
		(len(f.tenants) == 0 || slices.Contains(f.tenants, tenant))
}

func (f keyFilter) query() map[string][]string {
	q := map[string][]string{}
	if len(f.roles) > 0 {
		q[contract.FieldRoles] = []string{strings.Join(f.roles, ",")}
	}
	if len(f.tenants) > 0 {
		q[contract.FieldTenants] = []string{strings.Join(f.tenants, ",")}
	}
	return q
}
