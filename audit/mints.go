package audit

import (
	"strconv"
	"strings"
	"time"
)

// Mints: which answers minted a credential, and what the mint says of it.

// index finds every mint, and what renewals teach about lease ids.
func (e *engine) index() {
	for _, r := range e.log.Records {
		if r.Request == nil {
			continue
		}
		if isRenew(r.Request.Path) {
			if h, l := r.reqData("lease_id"), r.leaseID(); isHMAC(h) && l != "" && !isHMAC(l) {
				e.learnedLease[h] = l
			}
		}
		if !e.isKB(r) || r.Response == nil || r.Failed() {
			continue
		}
		c := e.mintIn(r)
		if c == nil {
			continue
		}
		e.linkParent(c, r)
		e.addCred(c)
		e.mintOf[r] = c
	}
}

// mintIn is the credential a successful keybroker answer minted, nil when
// it minted none.
func (e *engine) mintIn(r *Record) *Cred {
	mount, segs := e.rel(r)
	c := &Cred{Mount: mount, MintedAt: r.Time, mint: r, idForms: forms{}, leaseForms: forms{}}
	if !mintKind(c, r, segs) {
		return nil
	}
	if c.Kind == "api_key" {
		c.ID, c.tokenHMAC = r.respData("key_id"), r.respData("key")
	} else {
		c.ID, c.tokenHMAC = r.respData("jti"), r.respData("token")
	}
	if c.ID == "" || c.ID == c.Parent {
		return nil // an approval request, or an answer about the old key
	}
	if c.Role == "" {
		c.Role = r.respData("role")
	}
	c.Tenant, c.Name = r.respData("tenant"), r.respData("name")
	if c.Name == "" {
		c.Name = r.reqData("name")
	}
	c.Scopes = strs(r.Response.Data["scopes"])
	if _, ok := r.Response.Data["scopes"]; !ok {
		c.Scopes = strs(r.Request.Data["scopes"])
	}
	c.LeaseID = r.leaseID()
	c.refreshHMAC = r.respData("refresh_token")
	c.clientToken, c.accessor = r.Request.ClientToken, r.Request.ClientTokenAccessor
	c.Minter = actorOf(r)
	c.hiddenID = isHMAC(c.ID)
	if s := r.respData("expires_at"); s != "" && !isHMAC(s) {
		c.expiresAt, _ = time.Parse(time.RFC3339Nano, s)
	} else if n, err := strconv.ParseInt(r.respData("expires_in"), 10, 64); err == nil && c.Kind == "jwt" {
		c.expiresAt = r.Time.Add(time.Duration(n) * time.Second)
	}
	return c
}

// mintKind says whether the path (segs, inside its mount) mints, and sets
// what kind of credential and how: a key or a token, minted (or through an
// approval), rotated, refreshed or exchanged.
func mintKind(c *Cred, r *Record, segs []string) bool {
	switch {
	case len(segs) == 2 && segs[0] == "keys" && segs[1] != "id":
		c.Kind, c.MintedVia, c.Role = "api_key", "mint", segs[1]
	case keyOp(segs) == "rotate":
		c.Kind, c.MintedVia, c.Parent = "api_key", "rotation", keyPathID(segs)
	case len(segs) == 2 && segs[0] == "token" && segs[1] == "refresh":
		c.Kind, c.MintedVia = "jwt", "refresh"
	case len(segs) == 2 && segs[0] == "token" && segs[1] == "exchange":
		c.Kind, c.MintedVia = "jwt", "exchange"
	case len(segs) == 2 && segs[0] == "token":
		c.Kind, c.MintedVia, c.Role = "jwt", "mint", segs[1]
	default:
		return false
	}
	if c.MintedVia == "mint" && r.reqData("approval_id") != "" {
		c.MintedVia = "approval"
	}
	return true
}

// linkParent links a refreshed, exchanged or rotated credential to the one
// it came from, when that one's mint is known.
func (e *engine) linkParent(c *Cred, r *Record) {
	switch c.MintedVia {
	case "refresh":
		if p := e.byRefresh[r.reqData("refresh_token")]; p != nil {
			c.parent, c.Parent = p, p.ID
		}
	case "exchange":
		if p := e.byToken[r.reqData("subject_token")]; p != nil {
			c.parent, c.Parent = p, p.ID
			p.children = append(p.children, c)
		}
	case "rotation":
		c.parent = e.byForm[c.Parent]
	}
}

func (e *engine) mintEvent(c *Cred, r *Record) {
	d := map[string]string{"via": c.MintedVia, "role": shortHMAC(c.Role), "tenant": shortHMAC(c.Tenant),
		"name": shortHMAC(c.Name), "lease": c.LeaseID, "approval_id": r.reqData("approval_id")}
	ev := e.emit(c, r, "minted", d)
	if isHMAC(c.ID) {
		e.hide(c, ev, "response", map[string]string{"api_key": "key_id", "jwt": "jti"}[c.Kind])
	}
	if isHMAC(c.Role) {
		e.hide(c, ev, "response", "role")
	}
	if isHMAC(c.Tenant) {
		e.hide(c, ev, "response", "tenant")
	}
	if isHMAC(c.Name) {
		e.hide(c, ev, "response", "name")
	}
	hiddenScopes := false
	var sc []string
	for _, s := range c.Scopes {
		if isHMAC(s) {
			hiddenScopes = true
		}
		sc = append(sc, shortHMAC(s))
	}
	d["scopes"] = strings.Join(sc, ",")
	if hiddenScopes {
		e.hide(c, ev, "response", "scopes")
	}
	if !c.expiresAt.IsZero() {
		ttl := c.expiresAt.Sub(r.Time)
		if c.expiresAt.Nanosecond() == 0 {
			// expires_at is given to the second, truncated: round up.
			ttl = (ttl + time.Second - 1).Truncate(time.Second)
		}
		d["ttl"] = ttl.Round(time.Second).String()
		d["expires_at"] = c.expiresAt.UTC().Format(time.RFC3339)
	} else if isHMAC(r.respData("expires_at")) {
		e.hide(c, ev, "response", "expires_at")
	}
	if c.parent != nil {
		c.Parent = c.parent.ID
	}
	d["parent"] = shortHMAC(c.Parent)
	if c.MintedVia == "exchange" {
		var as []string
		for _, a := range strs(r.Response.Data["actors"]) {
			as = append(as, shortHMAC(a))
		}
		d["actors"] = strings.Join(as, ">")
	}
	for k, v := range d {
		if v == "" {
			delete(d, k)
		}
	}
	// The predecessor's side of a refresh, exchange or rotation.
	if p := c.parent; p != nil {
		switch c.MintedVia {
		case "refresh":
			p.refreshedAt = r.Time
			e.emit(p, r, "refreshed", map[string]string{"successor": c.ID})
		case "exchange":
			e.emit(p, r, "exchanged", map[string]string{"new_jti": c.ID, "actors": d["actors"]})
		case "rotation":
			ev := e.emit(p, r, "rotated", map[string]string{"successor": c.ID})
			if g := r.respData("grace_ends"); isHMAC(g) {
				e.hide(p, ev, "response", "grace_ends")
			} else if t, err := time.Parse(time.RFC3339Nano, g); err == nil {
				ev.Details["grace_ends"] = t.UTC().Format(time.RFC3339)
				p.graceEnds = t
			}
		}
	}
}
