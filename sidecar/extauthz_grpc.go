package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Envoy's ext_authz over gRPC (envoy.service.auth.v3.Authorization/Check),
// on grpc_listen. It is one more way to ask for a decision: the request
// Envoy reports goes through decide like every other, and the answer is
// the same one the HTTP paths give, in Envoy's message types. Envoy then
// does what the answer says: on allow it sets the identity headers and
// removes the credential before the upstream; on deny it sends the
// denial as its own reply.

// checkGRPCListen: the gRPC service answers only peers in trusted_proxies,
// as /verify does, so it needs some.
func checkGRPCListen(addr string, trusted int) error {
	if addr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("grpc_listen %q must be host:port, such as 127.0.0.1:9001", addr)
	}
	if trusted == 0 {
		return fmt.Errorf("grpc_listen %q: list Envoy's address in trusted_proxies; the gRPC ext_authz service answers only trusted peers", addr)
	}
	return nil
}

// grpcServer is the gRPC server for ext_authz, with limits in the spirit
// of the HTTP listeners': a peer cannot hold a connection or memory for
// nothing.
func (sc *Sidecar) grpcServer() *grpc.Server {
	srv := grpc.NewServer(
		// A CheckRequest is the request's headers, its path twice (the
		// path field and the :path header) and a little more; Envoy's
		// own header limit is 60 KiB by default. Larger ones (a body sent
		// with with_request_body, which the sidecar does not read) are
		// refused with RESOURCE_EXHAUSTED, which Envoy treats as a denial.
		grpc.MaxRecvMsgSize(2*sc.s.maxHeaderBytes+64<<10),
		// The RPC's own HTTP/2 headers (Envoy's grpc metadata), not the
		// checked request's: grpc-go would take 16 MiB.
		grpc.MaxHeaderListSize(uint32(sc.s.maxHeaderBytes)),
		// Time to complete the HTTP/2 handshake, like read_header_timeout.
		grpc.ConnectionTimeout(sc.s.readHeaderTimeout),
		// Envoy keeps its connection to the cluster open between checks
		// and may ping it (connection_keepalive); grpc-go's default
		// policy (at most one ping per 5 minutes, none without a stream)
		// would close such a connection with too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// An idle connection is closed after idle_timeout (Envoy opens a
		// new one when it needs one), and a silent peer is found in
		// about a minute rather than never.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: sc.s.idleTimeout, Time: time.Minute, Timeout: 20 * time.Second}),
	)
	authv3.RegisterAuthorizationServer(srv, extAuthz{sc: sc})
	return srv
}

type extAuthz struct {
	authv3.UnimplementedAuthorizationServer
	sc *Sidecar
}

// Check answers every request with a CheckResponse, allow or deny; an
// error only when the answer cannot be expressed (Envoy then denies with
// its status_on_error, 403 by default, and never allows: failure_mode_allow
// must stay false).
func (a extAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return a.sc.checkGRPC(ctx, req)
}

func (sc *Sidecar) checkGRPC(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if !sc.trusted(grpcPeer(ctx)) {
		d := deny(http.StatusForbidden, reasonUntrustedGateway)
		sc.countEarlyDenial("grpc", d, request{clientIP: grpcPeer(ctx)})
		return sc.grpcDenial(d), nil
	}
	hr := req.GetAttributes().GetRequest().GetHttp()
	header, ok := grpcHeaders(hr)
	// The body is never read here; how large it may be is. Envoy reports
	// in size what it has received of the body (0 unless it buffers it),
	// so Content-Length is the one that tells, when the client sent one.
	tooLarge, clOK := sc.bodyTooLarge(hr.GetSize(), header)
	if hr == nil || hr.GetMethod() == "" || hr.GetPath() == "" || !ok || !clOK {
		d := deny(http.StatusBadRequest, reasonBadRequest)
		sc.countEarlyDenial("grpc", d, request{method: hr.GetMethod(), target: hr.GetPath(), header: header, clientIP: sourceIP(req)})
		return sc.grpcDenial(d), nil
	}
	if tooLarge {
		return sc.grpcDenial(deny(http.StatusRequestEntityTooLarge, reasonBodyTooLarge)), nil
	}
	d := sc.timedDecideCtx(ctx, "grpc", request{
		method: hr.GetMethod(), target: hr.GetPath(), header: header, clientIP: sourceIP(req),
	})
	if !d.allowed() {
		return sc.grpcDenial(d), nil
	}
	allow, err := grpcAllow(d, header, sc.s.stripped)
	if d.hold != nil {
		// As on /verify: the sidecar never sees the response, so the
		// route's cost is all that can be charged; nothing when the
		// request is not let through after all.
		cost := d.rt.cost
		if err != nil {
			cost = 0
		}
		d.hold.settle(cost)
	}
	if err != nil {
		return nil, err
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: allow},
	}, nil
}

// grpcPeer is the address of the gRPC client (Envoy), invalid when it is
// not an IP (a unix socket): such a peer is never trusted.
func grpcPeer(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// sourceIP is the client's address as Envoy reports it: its downstream
// connection's peer (after a PROXY protocol listener filter, if any), not
// read from X-Forwarded-For. Envoy's trusted peer vouches for it; headers
// the client sent cannot change it. Anything but an IP (a pipe, an
// internal listener) is unknown: no CIDR bound admits it.
func sourceIP(req *authv3.CheckRequest) netip.Addr {
	a, err := netip.ParseAddr(req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress())
	if err != nil || a.Zone() != "" {
		return netip.Addr{}
	}
	return a.Unmap()
}

// credentialHeaders hold a credential or a DPoP proof: the upstream never
// sees them. No value of theirs that the sidecar accepts has a comma.
var credentialHeaders = []string{"Authorization", "X-Api-Key", "Dpop"}

// grpcHeaders reads the request's headers as an http.Header with canonical
// keys, so that presentedFrom and the rest of decide read them exactly as
// on the HTTP paths. ok is false when they cannot be read unambiguously.
//
// Envoy sends either headers, a map in which it joined repeated headers
// with ",", or (encode_raw_headers) header_map, a list that keeps them
// apart. A joined credential header cannot be told from a repeated one, so
// it is split again: decide then refuses it as it refuses a repeated
// header (400 bad_request) and never picks one of the copies.
// Pseudo-headers are left out: method and path have their own fields, and
// Host passes through untouched.
func grpcHeaders(hr *authv3.AttributeContext_HttpRequest) (http.Header, bool) {
	joined, raw := hr.GetHeaders(), hr.GetHeaderMap().GetHeaders()
	if len(joined) > 0 && len(raw) > 0 {
		return nil, false // Envoy sends one or the other, never both
	}
	h := make(http.Header, len(joined)+len(raw))
	for k, v := range joined {
		if strings.HasPrefix(k, ":") {
			continue
		}
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if slices.Contains(credentialHeaders, ck) {
			h[ck] = append(h[ck], strings.Split(v, ",")...)
			continue
		}
		// Two keys differing only in case (not from Envoy, which
		// lower-cases them) end up as two values: repeated.
		h[ck] = append(h[ck], v)
	}
	for _, hv := range raw {
		v := hv.GetValue()
		switch {
		case v != "" && len(hv.GetRawValue()) > 0:
			return nil, false // one or the other, never both
		case v == "":
			v = string(hv.GetRawValue())
		}
		if k := hv.GetKey(); !strings.HasPrefix(k, ":") {
			ck := textproto.CanonicalMIMEHeaderKey(k)
			h[ck] = append(h[ck], v)
		}
	}
	return h, true
}

// bodyTooLarge says whether the request's body is over
// max_request_body_bytes, by what Envoy reports of it and by its
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

// grpcAllow is an allow as Envoy applies it. Every identity header is set,
// empty where it does not apply, overwriting any copy the client sent (as
// setIdentity(h, id, true) on /verify). Removed before the upstream: the
// credential headers, and every other X-Keybroker-* header the client sent
// (X-Keybroker-Reason, a name the sidecar does not define, or one spelled
// with underscores), so identity headers reach the service only from the
// sidecar. An identity header the
// sidecar sets empty and the client also sent is removed as well: Envoy
// applies removals after sets, so it then arrives absent (which a service
// must read as empty anyway), and a client's copy survives no Envoy that
// might skip setting an empty value.
//
// strip says which other headers the client sent go too (strip_headers:
// the routing overrides by default), as the proxy removes them.
func grpcAllow(d decision, clientHeader http.Header, strip func(string) bool) (*authv3.OkHttpResponse, error) {
	identity := http.Header{}
	setIdentity(identity, d.id, true)
	ok := &authv3.OkHttpResponse{}
	for _, name := range identityHeaders {
		v := identity.Get(name)
		if !headerValueOK(v) {
			// Vault refuses control characters in what it mints;
			// should one get here, deny rather than hand Envoy a header
			// it might forward broken. The value is not in the error.
			return nil, status.Error(codes.Internal, "keybroker-sidecar: an identity value cannot be sent as a header")
		}
		ok.Headers = append(ok.Headers, overwrite(name, v))
	}
	if d.hold != nil && d.hold.remaining >= 0 {
		// To the client, as the proxy puts it on its response (and
		// examples/nginx.conf on nginx's); never to the service.
		ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, overwrite(headerRemaining, strconv.FormatInt(d.hold.remaining, 10)))
	}
	if rh := (http.Header{}); d.id != nil && d.id.replacedBy != "" {
		setReplaced(rh, d.id)
		for _, name := range []string{headerReplacedBy, headerKeyExpires} {
			ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, overwrite(name, rh.Get(name)))
		}
	}
	for _, name := range credentialHeaders {
		ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(name))
	}
	for k := range clientHeader {
		// X_Keybroker_Role and X_API_Key too: CGI-style servers read
		// them as X-Keybroker-Role and X-API-Key (examples/envoy.yaml
		// has Envoy drop such headers first).
		if strip(k) {
			ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(k))
			continue
		}
		if !strippedHeader(k) || slices.Contains(credentialHeaders, k) {
			continue // kept, or removed above
		}
		if slices.Contains(identityHeaders, k) && identity.Get(k) != "" {
			continue // set above; removing it would undo that
		}
		ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(k))
	}
	slices.Sort(ok.HeadersToRemove[len(credentialHeaders):]) // map order: keep answers reproducible
	return ok, nil
}

// overwrite replaces the header wherever Envoy applies it (append_action;
// the deprecated append is left unset, which Envoy reads the same way).
// keep_empty_value says that an empty value is meant.
func overwrite(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:         &corev3.HeaderValue{Key: strings.ToLower(name), Value: value},
		AppendAction:   corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		KeepEmptyValue: true,
	}
}

// headerValueOK: valid UTF-8 (a proto string must be) and no control
// character but tab.
func headerValueOK(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return utf8.ValidString(v)
}

// grpcDenial is a deny as Envoy sends it to the client: writeDenial's
// status, headers and body, byte for byte what the HTTP paths answer.
// Envoy denies on any gRPC status but OK and then sends denied_response;
// the code only says what kind of denial it was (UNAUTHENTICATED for a 401,
// PERMISSION_DENIED otherwise).
func (sc *Sidecar) grpcDenial(d decision) *authv3.CheckResponse {
	rec := &denialRecorder{header: http.Header{}}
	sc.writeDenial(rec, d, false)
	denied := &authv3.DeniedHttpResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode(rec.status)},
		Body:   rec.body.String(),
	}
	names := make([]string, 0, len(rec.header))
	for k := range rec.header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for i, v := range rec.header[k] {
			o := overwrite(k, v)
			if i > 0 {
				o.AppendAction = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
			denied.Headers = append(denied.Headers, o)
		}
	}
	code := codes.PermissionDenied
	if d.status == http.StatusUnauthorized {
		code = codes.Unauthenticated
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(code), Message: d.reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: denied},
	}
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
