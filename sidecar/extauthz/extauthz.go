package extauthz

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
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

	"github.com/keybroker/keybroker/sidecar"
)

// Checker is what the service needs of the sidecar (*sidecar.Sidecar).
type Checker interface {
	Check(ctx context.Context, req sidecar.CheckRequest) sidecar.Verdict
	Limits() sidecar.Limits
}

// Server is the ext_authz service on a listener, for
// sidecar.Listeners.Also.
type Server struct {
	srv *grpc.Server
	l   net.Listener
}

// Listen opens addr (grpc_listen) and returns the service on it.
func Listen(c Checker, addr string) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("grpc_listen: %w", err)
	}
	return New(c, l), nil
}

// New returns the service on l, with limits in the spirit of the HTTP
// listeners': a peer cannot hold a connection or memory for nothing.
func New(c Checker, l net.Listener) *Server {
	lim := c.Limits()
	srv := grpc.NewServer(
		// A CheckRequest is the request's headers, its path twice (the
		// path field and the :path header) and a little more; Envoy's
		// own header limit is 60 KiB by default. Larger ones (a body sent
		// with with_request_body, which the sidecar does not read) are
		// refused with RESOURCE_EXHAUSTED, which Envoy treats as a denial.
		grpc.MaxRecvMsgSize(2*lim.MaxHeaderBytes+64<<10),
		// The RPC's own HTTP/2 headers (Envoy's grpc metadata), not the
		// checked request's: grpc-go would take 16 MiB.
		grpc.MaxHeaderListSize(uint32(lim.MaxHeaderBytes)),
		// Time to complete the HTTP/2 handshake, like read_header_timeout.
		grpc.ConnectionTimeout(lim.ReadHeaderTimeout),
		// Envoy keeps its connection to the cluster open between checks
		// and may ping it (connection_keepalive); grpc-go's default
		// policy (at most one ping per 5 minutes, none without a stream)
		// would close such a connection with too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// An idle connection is closed after idle_timeout (Envoy opens a
		// new one when it needs one), and a silent peer is found in
		// about a minute rather than never.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: lim.IdleTimeout, Time: time.Minute, Timeout: 20 * time.Second}),
	)
	authv3.RegisterAuthorizationServer(srv, service{c: c})
	return &Server{srv: srv, l: l}
}

// Addr is the address the service listens on.
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Serve serves until Shutdown; nil then, anything else is the listener
// failing.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.l); err != nil {
		return fmt.Errorf("grpc_listen: %w", err)
	}
	return nil
}

// Shutdown lets the checks in flight finish (Envoy holds their requests
// until then) until ctx ends, then ends them, and closes the listener
// (which Serve may never have taken).
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.l.Close()
	stopped := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.srv.Stop() // ends what is still in flight
		<-stopped
	}
	return nil
}

type service struct {
	authv3.UnimplementedAuthorizationServer
	c Checker
}

// Check answers every request with a CheckResponse, allow or deny; an
// error only when the answer cannot be expressed (Envoy then denies with
// its status_on_error, 403 by default, and never allows: failure_mode_allow
// must stay false).
func (s service) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	hr := req.GetAttributes().GetRequest().GetHttp()
	header, ok := requestHeaders(hr)
	v := s.c.Check(ctx, sidecar.CheckRequest{
		Gateway: peerAddr(ctx), Method: hr.GetMethod(), Target: hr.GetPath(), Header: header, Unreadable: !ok,
		ClientIP: sourceIP(req), BodySize: hr.GetSize(),
	})
	if !v.Allowed {
		return denial(&v), nil
	}
	allow, err := okResponse(&v)
	// The route's cost, charged as the request goes on; nothing when it
	// does not after all.
	v.Settle(err == nil)
	if err != nil {
		return nil, err
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: allow},
	}, nil
}

// peerAddr is the address of the gRPC client (Envoy), invalid when it is
// not an IP (a unix socket): such a peer is never trusted.
func peerAddr(ctx context.Context) netip.Addr {
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

// requestHeaders reads the request's headers as an http.Header with
// canonical keys, so that the sidecar reads them exactly as on the HTTP
// paths. ok is false when they cannot be read unambiguously.
//
// Envoy sends either headers, a map in which it joined repeated headers
// with ",", or (encode_raw_headers) header_map, a list that keeps them
// apart. A joined credential header cannot be told from a repeated one, so
// it is split again: the sidecar then refuses it as it refuses a repeated
// header (400 bad_request) and never picks one of the copies.
// Pseudo-headers are left out: method and path have their own fields, and
// Host passes through untouched.
func requestHeaders(hr *authv3.AttributeContext_HttpRequest) (http.Header, bool) {
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
		if sidecar.IsCredentialHeader(ck) {
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

// okResponse is an allow as Envoy applies it: every identity header set
// with overwrite, empty where it does not apply, then v.Remove removed
// (Envoy applies removals after sets, so an identity header the sidecar
// sets empty and the client also sent arrives absent, which a service must
// read as empty anyway, and a client's copy survives no Envoy that might
// skip setting an empty value).
func okResponse(v *sidecar.Verdict) (*authv3.OkHttpResponse, error) {
	ok := &authv3.OkHttpResponse{HeadersToRemove: v.Remove}
	for _, f := range v.Set {
		if !headerValueOK(f.Value) {
			// Vault refuses control characters in what it mints;
			// should one get here, deny rather than hand Envoy a header
			// it might forward broken. The value is not in the error.
			return nil, status.Error(codes.Internal, "keybroker-sidecar: an identity value cannot be sent as a header")
		}
		ok.Headers = append(ok.Headers, overwrite(f.Name, f.Value))
	}
	// To the client, as the proxy puts them on its response (and
	// examples/nginx.conf on nginx's); never to the service.
	for _, f := range v.Response {
		ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, overwrite(f.Name, f.Value))
	}
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

// denial is a deny as Envoy sends it to the client: the HTTP paths' status,
// headers and body, byte for byte. Envoy denies on any gRPC status but OK
// and then sends denied_response; the code only says what kind of denial
// it was (UNAUTHENTICATED for a 401, PERMISSION_DENIED otherwise).
func denial(v *sidecar.Verdict) *authv3.CheckResponse {
	denied := &authv3.DeniedHttpResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode(v.Status)},
		Body:   v.Body,
	}
	names := make([]string, 0, len(v.Header))
	for k := range v.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for i, val := range v.Header[k] {
			o := overwrite(k, val)
			if i > 0 {
				o.AppendAction = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
			denied.Headers = append(denied.Headers, o)
		}
	}
	code := codes.PermissionDenied
	if v.Status == http.StatusUnauthorized {
		code = codes.Unauthenticated
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(code), Message: v.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: denied},
	}
}
