package audit

import (
	"strconv"
	"strings"
	"time"
)

// keybroker's own paths, once a credential is minted: lookups, suspension,
// rotation, revocation by value, verification, budgets, refresh and exchange.

// keybroker reads one request to a keybroker mount: a mint, or what was
// done with (or refused to) a credential already minted.
func (e *engine) keybroker(r *Record) {
	mount, segs := e.rel(r)
	if c := e.mintOf[r]; c != nil {
		e.mintEvent(c, r)
		return
	}
	switch segs[0] {
	case "keys":
		e.keyPath(r, segs)
	case "roles":
		e.rolePath(r, mount, segs)
	case "budget":
		e.budget(r, segs)
	case "verify":
		e.verify(r)
	case "token":
		e.tokenFailure(r, segs)
	case "revoke":
		e.revokeByValue(r)
	default:
		for _, k := range []string{"key_id", "jti", "id"} {
			if c := e.byForm[r.reqData(k)]; c != nil {
				e.emit(c, r, "vault_request", map[string]string{"error": e.errText(c, nil, r)})
				return
			}
		}
	}
}

// keyPathID is the key_id a path about one key names: keys/<role>/id/<id>
// (and below it), or keys/id/<id> as plugins before issue 23 served it;
// "" for any other path.
func keyPathID(segs []string) string {
	switch {
	case len(segs) >= 3 && segs[0] == "keys" && segs[1] == "id":
		return segs[2]
	case len(segs) >= 4 && segs[0] == "keys" && segs[2] == "id":
		return segs[3]
	}
	return ""
}

// keyOp is what a path about one key does below it (rotate, suspend,
// resume; "" for the key itself).
func keyOp(segs []string) string {
	switch {
	case keyPathID(segs) == "":
		return ""
	case segs[1] == "id":
		return strings.Join(segs[3:], "/")
	}
	return strings.Join(segs[4:], "/")
}

// keyPath: a request about one key (keys/<role>/id/<id> and below).
func (e *engine) keyPath(r *Record, segs []string) {
	id := keyPathID(segs)
	if id == "" {
		return
	}
	c := e.byForm[id]
	if c == nil {
		return
	}
	sub := keyOp(segs)
	switch {
	case sub == "" && r.Request.Operation == "delete":
		e.revocation(c, r, "key delete ("+r.Request.Path+")", nil)
	case sub == "" && r.Request.Operation == "read":
		e.emit(c, r, "looked_up", map[string]string{"revoked": r.respData("revoked"), "error": e.errText(c, nil, r)})
	case sub == "suspend" || sub == "resume":
		kind := map[string]string{"suspend": "suspended", "resume": "resumed"}[sub]
		if r.Failed() {
			kind = sub + "_refused"
		}
		e.emit(c, r, kind, map[string]string{"error": e.errText(c, nil, r)})
	case sub == "rotate": // a failed rotation; a successful one is the successor's mint
		e.emit(c, r, "rotate_refused", map[string]string{"error": e.errText(c, nil, r)})
	default:
		e.emit(c, r, "vault_request", map[string]string{"error": e.errText(c, nil, r)})
	}
}

// rolePath: a role suspended or resumed reaches every key of it alive then.
func (e *engine) rolePath(r *Record, mount string, segs []string) {
	if len(segs) != 3 || (segs[2] != "suspend" && segs[2] != "resume") || r.Failed() {
		return
	}
	for _, c := range e.byRole[mount+segs[1]] {
		if c.MintedAt.Before(r.Time) && !c.revokedBy(r.Time) {
			kind := map[string]string{"suspend": "role_suspended", "resume": "role_resumed"}[segs[2]]
			e.emit(c, r, kind, map[string]string{"role": segs[1]})
		}
	}
}

// tokenFailure: a token path that minted nothing, a refused refresh or
// exchange.
func (e *engine) tokenFailure(r *Record, segs []string) {
	if len(segs) == 2 && segs[1] == "refresh" {
		e.refreshFailure(r)
	} else if len(segs) == 2 && segs[1] == "exchange" {
		if c := e.byToken[r.reqData("subject_token")]; c != nil {
			e.emit(c, r, "exchange_refused", map[string]string{"error": e.errText(c, nil, r)})
		}
	}
}

// revokeByValue: keybroker/revoke with key (and keys) in plaintext, which
// the log has HMAC'd like the mint answer's key: equal HMACs, same key.
// The answer's results[i] (kind, id, result) is for the i-th credential.
func (e *engine) revokeByValue(r *Record) {
	given := []string{r.reqData("key")}
	if given[0] == "" {
		given = nil
	}
	given = append(given, strs(r.Request.Data["keys"])...)
	var results []interface{}
	if r.Response != nil {
		results, _ = r.Response.Data["results"].([]interface{})
	}
	for i, v := range given {
		c := e.byToken[v]
		var res map[string]interface{}
		if i < len(results) {
			res, _ = results[i].(map[string]interface{})
		}
		if c == nil && res != nil {
			c = e.byForm[str(res["id"])]
		}
		if c == nil {
			continue
		}
		route := "revoke by value (" + r.Request.Path + ")"
		if r.Failed() {
			e.revocation(c, r, route, nil)
			continue
		}
		result := str(res["result"])
		switch {
		case result == "revoked":
			e.revocation(c, r, route, map[string]string{"result": result})
		case result == "" || isHMAC(result):
			ev := e.emit(c, r, "revoked", map[string]string{"result": shortHMAC(result),
				"note": "the result is HMAC'd: revoked, unless it was already revoked or expired"})
			ev.Route = route
			if result != "" {
				e.hide(c, ev, "response", "result")
			}
			if c.LeaseID != "" {
				ev.Details["lease"] = c.LeaseID
			}
			e.revoke(c, r.Time, route)
			e.cascadeExchanged(c, r)
		default: // already_revoked, expired, not_found, malformed
			e.emit(c, r, "revoke_by_value", map[string]string{"result": result}).Route = route
		}
	}
}

func (e *engine) verify(r *Record) {
	c := e.byForm[r.respData("key_id")]
	if c == nil {
		c = e.byForm[r.respData("jti")]
	}
	for _, k := range []string{"key", "token"} {
		if c == nil {
			c = e.byToken[r.reqData(k)]
		}
	}
	if c == nil || r.Response == nil {
		return
	}
	ev := e.emit(c, r, "verified", map[string]string{"valid": r.respData("valid"), "error": r.Error})
	if reason := r.respData("reason"); isHMAC(reason) {
		e.hide(c, ev, "response", "reason")
		ev.Details["reason"] = shortHMAC(reason)
	} else if reason != "" {
		ev.Details["reason"] = reason
	}
	if sc := strs(r.Request.Data["scopes"]); len(sc) > 0 {
		var out []string
		for _, s := range sc {
			if isHMAC(s) {
				e.hide(c, ev, "request", "scopes")
			}
			out = append(out, shortHMAC(s))
		}
		ev.Details["asked_scopes"] = strings.Join(out, ",")
	}
	if a := r.reqData("remote_addr"); a != "" && !isHMAC(a) {
		ev.Details["client_addr"] = a
	}
	c.Verifies++
}

func (e *engine) budget(r *Record, segs []string) {
	switch len(segs) {
	case 3: // budget/<role>/<id>
		e.budgetOf(r, segs[2])
		return
	case 2:
	default:
		return
	}
	byRes := func(id string) *Cred {
		if c := e.byReservation[id]; c != nil {
			return c
		}
		// reservation ids are <credential>:<uuid>
		if i := strings.IndexByte(id, ':'); i > 0 && !isHMAC(id) {
			return e.byForm[id[:i]]
		}
		return nil
	}
	switch segs[1] {
	case "reserve":
		c := e.byForm[r.reqData("id")]
		if c == nil {
			c = byRes(r.reqData("reservation_id"))
		}
		if c == nil {
			return
		}
		ev := e.emit(c, r, "budget_reserved", map[string]string{
			"granted": r.respData("granted"), "exhausted": r.respData("exhausted"), "remaining": r.respData("remaining"),
			"reservation_id": r.respData("reservation_id"), "holder": r.reqData("holder"), "error": e.errText(c, nil, r),
		})
		if u := r.reqData("units"); !isHMAC(u) {
			ev.Details["units"] = u
		}
		if isHMAC(ev.Details["holder"]) {
			e.hide(c, ev, "request", "holder")
			ev.Details["holder"] = shortHMAC(ev.Details["holder"])
		}
		if id := r.respData("reservation_id"); id != "" {
			e.byReservation[id] = c
			if isHMAC(id) {
				e.hide(c, ev, "response", "reservation_id")
				ev.Details["reservation_id"] = shortHMAC(id)
			}
		}
		if n, err := strconv.ParseInt(r.respData("granted"), 10, 64); err == nil {
			c.Granted += n
		}
		c.Reservations++
	case "report":
		id := r.reqData("reservation_id")
		c := byRes(id)
		if c == nil {
			return // a reservation_id HMAC'd in the request was HMAC'd in the reserve's answer too
		}
		ev := e.emit(c, r, "budget_reported", map[string]string{
			"reservation_id": shortHMAC(id), "period_used": r.respData("used"), "remaining": r.respData("remaining"),
			"released": r.respData("release"), "capped": r.respData("capped"), "ended": r.respData("ended"),
			"error": e.errText(c, nil, r),
		})
		if u := r.reqData("used"); u != "" && !isHMAC(u) {
			ev.Details["reservation_used"] = u
		}
		if r.respData("released") == "true" {
			ev.Details["released"] = "true"
		}
		if n, err := strconv.ParseInt(r.respData("used"), 10, 64); err == nil {
			c.PeriodUsed = n
		}
	default: // budget/<id>, as older plugins took changes too
		e.budgetOf(r, segs[1])
	}
}

// budgetOf tells a read or a change of credential id's budget.
func (e *engine) budgetOf(r *Record, id string) {
	c := e.byForm[id]
	if c == nil {
		return
	}
	if r.Request.Operation == "read" {
		e.emit(c, r, "budget_read", map[string]string{"used": r.respData("used"), "limit": r.respData("limit")})
	} else {
		e.emit(c, r, "budget_changed", map[string]string{"limit": r.respData("limit"), "error": e.errText(c, nil, r)})
	}
}

// refreshFailure: a refused refresh. The successful ones are mints. A
// refresh token presented again after it was used is reuse: the plugin
// revokes its whole family.
func (e *engine) refreshFailure(r *Record) {
	c := e.byRefresh[r.reqData("refresh_token")]
	if c == nil || !r.Failed() {
		return
	}
	if !c.refreshedAt.IsZero() && c.refreshedAt.Before(r.Time) {
		ev := e.emit(c, r, "refresh_reused", map[string]string{
			"error": e.errText(c, nil, r),
			"note":  "its refresh token was already used at " + c.refreshedAt.UTC().Format(time.RFC3339Nano) + ": reuse is treated as theft and the whole family is revoked",
		})
		for _, m := range e.family(c) {
			if m.revokedBy(r.Time) {
				continue
			}
			e.seq++
			rv := &Event{Time: r.Time, Kind: "revoked", cred: m, Credential: m.ID, Source: "inferred", seq: e.seq,
				Actor: ev.Actor, RequestID: r.ID, At: r.Source, Route: "refresh reuse detection (" + r.Request.Path + ")",
				Details: map[string]string{"reused": c.ID, "note": "every token of the refresh family is revoked by the plugin"}}
			e.events = append(e.events, rv)
			e.revoke(m, r.Time, rv.Route)
			e.cascadeExchanged(m, r)
		}
		return
	}
	e.emit(c, r, "refresh_refused", map[string]string{"error": e.errText(c, nil, r)})
}

// family is every token of c's refresh family that the inputs show.
func (e *engine) family(c *Cred) []*Cred {
	root := func(x *Cred) *Cred {
		for x.MintedVia == "refresh" && x.parent != nil {
			x = x.parent
		}
		return x
	}
	r := root(c)
	var out []*Cred
	for _, x := range e.creds {
		if x.Kind == "jwt" && root(x) == r {
			out = append(out, x)
		}
	}
	return out
}
