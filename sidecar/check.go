package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// Check is the seam for an adapter outside this package: a front end that
// speaks a gateway's own protocol (Envoy's ext_authz over gRPC, package
// extauthz, which only keybroker-sidecar links) asks for a decision with a
// CheckRequest and renders the Verdict in its protocol's terms. The
// decision is decide's, as on every other path; the adapter only
// translates.

// CheckRequest is a request as a gateway that applies the answer itself
// reports it.
type CheckRequest struct {
	// Gateway is the address of the peer asking (Envoy). Only peers in
	// trusted_proxies are answered; an invalid address never is.
	Gateway netip.Addr
	// Method and Target are the request's method and its raw
	// request-target, as the client sent them.
	Method, Target string
	// Header is the request's header with canonical keys, a repeated
	// header as separate values. A gateway that joins them with ","
	// splits the credential headers again (IsCredentialHeader), so a
	// repeated credential is refused rather than one copy picked.
	Header http.Header
	// Unreadable: the adapter could not read the request unambiguously
	// (its headers sent two ways at once): it is refused as bad_request.
	Unreadable bool
	// ClientIP is the client's address as the gateway vouches for it, not
	// read from a header; invalid when unknown (no CIDR bound admits it).
	ClientIP netip.Addr
	// BodySize is what the gateway reports of the body (0 unless it
	// buffers it); Content-Length is checked as well.
	BodySize int64
}

// Field is one header to set.
type Field struct{ Name, Value string }

// Verdict is the answer to a CheckRequest. On a denial, Status, Header and
// Body are the answer the HTTP paths give, byte for byte, for the gateway
// to send the client. On an allow, the gateway sets Set on the request,
// removes Remove from it (after setting: an identity header set empty and
// also sent by the client goes), adds Response to the client's response,
// then calls Settle once.
type Verdict struct {
	Allowed bool
	Status  int
	Reason  string

	// Set is every identity header (contract.IdentityHeaders, in order),
	// empty where it does not apply, overwriting the client's copy.
	Set []Field
	// Remove are the headers the upstream must not get, lower-case: the
	// credential headers, then, sorted, every other one the client sent
	// that is X-Keybroker-* in any spelling (not one Set gives a value)
	// or in strip_headers.
	Remove []string
	// Response goes to the client, never the service: what a metered
	// credential has left, and a rotated key's successor.
	Response []Field

	// Header and Body are a denial's.
	Header http.Header
	Body   string

	hold *hold
	cost int64
}

// Check decides a request a gateway reports, counted and logged as mode
// "grpc". It is safe for concurrent use.
func (sc *Sidecar) Check(ctx context.Context, req CheckRequest) Verdict {
	// As the HTTP front ends read them: an IPv4-mapped address is the
	// IPv4 one (else every such client would be one client to the flood
	// guard and the replay quota), and a zoned one is no client address.
	req.Gateway, req.ClientIP = req.Gateway.Unmap(), req.ClientIP.Unmap()
	if req.ClientIP.Zone() != "" {
		req.ClientIP = netip.Addr{}
	}
	if !sc.trusted(req.Gateway) {
		d := deny(http.StatusForbidden, contract.ReasonUntrustedGateway)
		sc.countEarlyDenial("grpc", d, request{clientIP: req.Gateway})
		return sc.denied(d)
	}
	tooLarge, clOK := sc.bodyTooLarge(req.BodySize, req.Header)
	r := request{method: req.Method, target: req.Target, header: req.Header, clientIP: req.ClientIP}
	if req.Method == "" || req.Target == "" || req.Unreadable || !clOK {
		d := deny(http.StatusBadRequest, contract.ReasonBadRequest)
		sc.countEarlyDenial("grpc", d, r)
		return sc.denied(d)
	}
	if tooLarge {
		return sc.denied(deny(http.StatusRequestEntityTooLarge, contract.ReasonBodyTooLarge))
	}
	d := sc.core.decideAs(ctx, "grpc", r)
	if !d.allowed() {
		return sc.denied(d)
	}
	return sc.allowed(d, req.Header)
}

// Settle charges a metered allow: the route's cost when the gateway let
// the request through (it never shows the sidecar the response, so the
// cost is all that can be charged), nothing when it did not after all.
// Only the first call counts; without a budget it does nothing.
func (v *Verdict) Settle(forwarded bool) {
	if v.hold == nil {
		return
	}
	cost := v.cost
	if !forwarded {
		cost = 0
	}
	v.hold.settle(cost)
}

// IsCredentialHeader says whether a canonical header name is one a
// credential or a DPoP proof travels in. No value of theirs that the
// sidecar accepts has a comma.
func IsCredentialHeader(name string) bool { return slices.Contains(credentialHeaders, name) }

// credentialHeaders hold a credential or a DPoP proof: the upstream never
// sees them.
var credentialHeaders = []string{"Authorization", "X-Api-Key", "Dpop"}

// denied renders a denial as writeDenial does on the HTTP paths.
func (sc *Sidecar) denied(d decision) Verdict {
	rec := &denialRecorder{header: http.Header{}}
	sc.writeDenial(rec, d, false)
	return Verdict{Status: rec.status, Reason: d.reason, Header: rec.header, Body: rec.body.String()}
}

// allowed is an allow as a gateway applies it: identity set, as
// setIdentity(h, id, true) on /verify; the client's credential,
// X-Keybroker-* and strip_headers removed, as the proxy removes them
// (X_Keybroker_Role and X_API_Key too: CGI-style servers read them as
// X-Keybroker-Role and X-API-Key).
func (sc *Sidecar) allowed(d decision, clientHeader http.Header) Verdict {
	v := Verdict{Allowed: true, Status: d.status, Reason: d.reason, hold: d.hold}
	if d.rt != nil {
		v.cost = d.rt.cost
	}
	identity := http.Header{}
	setIdentity(identity, d.id, true)
	v.Set = make([]Field, len(identityHeaders))
	for i, name := range identityHeaders {
		v.Set[i] = Field{name, identity.Get(name)}
	}
	if d.hold != nil && d.hold.remaining >= 0 {
		v.Response = append(v.Response, Field{headerRemaining, strconv.FormatInt(d.hold.remaining, 10)})
	}
	if d.id != nil && d.id.replacedBy != "" {
		v.Response = append(v.Response, Field{headerReplacedBy, d.id.replacedBy}, Field{headerKeyExpires, d.id.expiresAt.UTC().Format(time.RFC3339)})
	}
	v.Remove = make([]string, 0, len(credentialHeaders)+len(clientHeader))
	for _, name := range credentialHeaders {
		v.Remove = append(v.Remove, strings.ToLower(name))
	}
	for k := range clientHeader {
		if sc.s.stripped(k) {
			v.Remove = append(v.Remove, strings.ToLower(k))
			continue
		}
		if !strippedHeader(k) || slices.Contains(credentialHeaders, k) {
			continue // kept, or removed above
		}
		if slices.Contains(identityHeaders, k) && identity.Get(k) != "" {
			continue // set above; removing it would undo that
		}
		v.Remove = append(v.Remove, strings.ToLower(k))
	}
	slices.Sort(v.Remove[len(credentialHeaders):]) // map order: keep answers reproducible
	return v
}

// bodyTooLarge says whether the request's body is over
// max_request_body_bytes, by what the gateway reports of it and by its
// Content-Length; ok is false for a Content-Length that is not one number.
func (sc *Sidecar) bodyTooLarge(size int64, h http.Header) (tooLarge, ok bool) {
	if size > sc.s.maxBody {
		return true, true
	}
	cl, single := single(h, "Content-Length")
	if !single {
		return false, false
	}
	if cl == "" {
		return false, true
	}
	n, err := strconv.ParseInt(strings.TrimSpace(cl), 10, 64)
	if err != nil || n < 0 {
		return false, false
	}
	return n > sc.s.maxBody, true
}

// denialRecorder is the http.ResponseWriter writeDenial renders into.
type denialRecorder struct {
	header http.Header
	status int
	body   strings.Builder
}

func (r *denialRecorder) Header() http.Header { return r.header }

func (r *denialRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *denialRecorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

// Limits are the connection limits the HTTP listeners apply, for an
// adapter's server to apply alike: a peer cannot hold a connection or
// memory for nothing.
type Limits struct {
	// MaxHeaderBytes is max_header_bytes.
	MaxHeaderBytes int
	// ReadHeaderTimeout (read_header_timeout) bounds a connection's
	// handshake; IdleTimeout (idle_timeout) an idle connection's life.
	ReadHeaderTimeout, IdleTimeout time.Duration
}

// Limits returns the configured connection limits.
func (sc *Sidecar) Limits() Limits {
	return Limits{MaxHeaderBytes: sc.s.maxHeaderBytes, ReadHeaderTimeout: sc.s.readHeaderTimeout, IdleTimeout: sc.s.idleTimeout}
}
