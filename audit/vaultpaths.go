package audit

import (
	"fmt"
	"strings"
)

// Vault's own paths that end or renew a credential: its lease renewed or
// revoked (one, by prefix, or with its minter's token).

func isRenew(p string) bool {
	return p == "sys/leases/renew" || p == "sys/renew" || strings.HasPrefix(p, "sys/leases/renew/") || strings.HasPrefix(p, "sys/renew/")
}

// record reads one Vault request outside keybroker's mounts: what Vault
// itself does to a credential's lease or its minter's token.
func (e *engine) record(r *Record) {
	if e.isKB(r) {
		e.keybroker(r)
		return
	}
	p := r.Request.Path
	switch {
	case isRenew(p):
		e.renewal(r, p)
	case isLeaseRevoke(p):
		e.leaseRevoke(r, p)
	case isPrefixRevoke(p):
		e.prefixRevoke(r, p)
	case isTokenRevoke(p):
		e.tokenRevoke(r, p)
	}
}

func isLeaseRevoke(p string) bool {
	return p == "sys/leases/revoke" || p == "sys/revoke" || strings.HasPrefix(p, "sys/leases/revoke/") || strings.HasPrefix(p, "sys/revoke/")
}

func isPrefixRevoke(p string) bool {
	return strings.HasPrefix(p, "sys/leases/revoke-prefix/") || strings.HasPrefix(p, "sys/revoke-prefix/") ||
		strings.HasPrefix(p, "sys/leases/revoke-force/") || strings.HasPrefix(p, "sys/revoke-force/")
}

func isTokenRevoke(p string) bool {
	return p == "auth/token/revoke" || p == "auth/token/revoke-orphan" || p == "auth/token/revoke-accessor" || p == "auth/token/revoke-self"
}

// renewal: a lease renewal (or its refusal), by the lease in the path,
// the answer or the request.
func (e *engine) renewal(r *Record, p string) {
	lease := r.leaseID()
	if lease == "" {
		lease = lastAfter(p, "renew/")
	}
	c := e.byLease[lease]
	if c == nil {
		c = e.byLease[r.reqData("lease_id")]
	}
	if c == nil {
		return
	}
	kind := "renewed"
	if r.Failed() {
		kind = "renew_refused"
	} else {
		c.Renewals++
	}
	ev := e.emit(c, r, kind, map[string]string{"lease": c.LeaseID, "error": e.errText(c, nil, r)})
	ev.Route = "lease renew (" + p + ")"
	if inc := r.reqData("increment"); inc != "" && !isHMAC(inc) {
		ev.Details["increment"] = inc + "s"
	}
}

// leaseRevoke: one lease revoked, by the path or lease_id; one whose
// HMAC'd lease_id matches no lease is kept as unresolved.
func (e *engine) leaseRevoke(r *Record, p string) {
	lease := lastAfter(p, "revoke/")
	c := e.byLease[lease]
	h := r.reqData("lease_id")
	if c == nil {
		c = e.byLease[h]
	}
	if c == nil {
		if isHMAC(h) && !r.Failed() {
			e.unresolved = append(e.unresolved, r)
		}
		return
	}
	e.revocation(c, r, "lease revoke ("+p+")", nil)
}

// prefixRevoke: every lease under a prefix revoked (by force or not), of
// the credentials alive then.
func (e *engine) prefixRevoke(r *Record, p string) {
	i := strings.Index(p, "/revoke-")
	prefix := p[i+1:]
	prefix = prefix[strings.IndexByte(prefix, '/')+1:]
	for _, c := range e.creds {
		if c.LeaseID != "" && strings.HasPrefix(c.LeaseID, prefix) && c.MintedAt.Before(r.Time) && !c.goneBy(r.Time) {
			e.revocation(c, r, "lease prefix revoke ("+p+")", map[string]string{"prefix": prefix})
		}
	}
}

// tokenRevoke: a token revoked takes the leases it minted with it, which
// Vault does not itemise.
func (e *engine) tokenRevoke(r *Record, p string) {
	var cs []*Cred
	switch p {
	case "auth/token/revoke-accessor":
		cs = e.byAccessor[r.reqData("accessor")]
	case "auth/token/revoke-self":
		cs = e.byClientToken[r.Request.ClientToken]
	default:
		cs = e.byClientToken[r.reqData("token")]
	}
	for _, c := range cs {
		if c.LeaseID == "" || c.goneBy(r.Time) || !c.MintedAt.Before(r.Time) {
			continue // a key without a lease (orphan role) outlives its minter's token
		}
		if r.Failed() {
			e.emit(c, r, "revoke_refused", map[string]string{"error": r.Error}).Route = "token revoke (" + p + ")"
			continue
		}
		note := "the token that minted it was revoked; Vault revokes the token's leases itself and does not itemise them in the audit log"
		if n := e.unresolvedBetween(c.MintedAt, r.Time); n > 0 {
			note += fmt.Sprintf("; unless the lease was revoked before by %s with an HMAC'd lease_id in between", plural(n, "lease revocation", "lease revocations"))
		}
		ev := e.emit(c, r, "revoked", map[string]string{"lease": c.LeaseID, "note": note})
		ev.Route = "token revocation cascade (" + p + ")"
		e.revoke(c, r.Time, ev.Route)
		e.cascadeExchanged(c, r)
	}
}

func lastAfter(p, marker string) string {
	if i := strings.Index(p, marker); i >= 0 {
		return p[i+len(marker):]
	}
	return ""
}
