package sidecar

import (
	"context"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// Identity is who an allowed request's credential says the caller is, for a
// Go service that embeds the verifier (Middleware). The same values go in
// the X-Keybroker-* headers.
type Identity struct {
	Subject string
	// KeyID is set for an API key, JTI for an agent JWT.
	KeyID, JTI   string
	Role, Tenant string
	Scopes       []string
	// Actors is the delegation chain of an exchanged token (RFC 8693 act),
	// the current actor first: someone acting for Subject. Empty when the
	// subject itself is calling; authorize on it where that matters.
	Actors []string
	// ExpiresAt is when the sidecar stops accepting the credential: its
	// expiry, plus the configured leeway for a JWT.
	ExpiresAt time.Time
	// DPoPBound: the credential is bound to a key the caller proved it
	// holds (RFC 9449), on this request.
	DPoPBound bool
}

type identityKey struct{}

// IdentityFrom returns the identity Middleware put in an allowed request's
// context; ok is false on a public route (no caller) and outside Middleware.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

func (id *identity) public() Identity {
	out := Identity{Subject: id.subject, Role: id.role, Tenant: id.tenant, Scopes: slices.Clone(id.scopes), Actors: slices.Clone(id.actors),
		ExpiresAt: id.expiresAt, DPoPBound: id.jkt != ""}
	if id.jwt {
		out.JTI = id.id
	} else {
		out.KeyID = id.id
	}
	return out
}

// Middleware is the verifier inside a Go service: each request is decided
// exactly as the reverse proxy decides it (routes, credential, CIDRs,
// scopes, rate limits, budgets, DPoP), denials are answered as the proxy
// answers them, and allowed requests reach next
//   - at the canonical path decided on (r.URL.Path, RawPath cleared), so
//     next routes on what was checked, never on another reading of it;
//   - without the credential, the DPoP proof, any X-Keybroker-* header the
//     client sent or the strip_headers (by default the routing overrides
//     X-Original-URL, X-HTTP-Method-Override and the like, which would have
//     next serve another route than the one checked), and with the
//     identity headers and IdentityFrom set.
//
// Put it outermost: it decides on r.RequestURI, the target as the client
// sent it, so a handler in front that rewrites r.URL (http.StripPrefix) is
// not what it checks; and it takes the client address from r.RemoteAddr
// (X-Forwarded-For only from trusted_proxies), so a handler in front must
// not rewrite that either (a "real IP" middleware). Call Start once before
// serving and Stop after; until Start has read the revocation feed (and,
// with key_replica, the key records) credentials are refused with 503, so
// wait for Ready before taking traffic.
// Metered routes are charged their cost, the usage_header of next's answer,
// or the OpenAI usage in its body.
func (sc *Sidecar) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sc.isMetadataRequest(r) {
			sc.serveResourceMetadata(w)
			return
		}
		if r.ContentLength > sc.s.maxBody {
			sc.writeDenial(w, deny(http.StatusRequestEntityTooLarge, contract.ReasonBodyTooLarge), false)
			return
		}
		target := r.RequestURI
		if target == "" { // a request made in process, not read from a client
			target = r.URL.RequestURI()
		}
		d := sc.core.decideAs(r.Context(), "middleware", request{method: r.Method, target: target, header: r.Header, clientIP: sc.clientIP(r)})
		if !d.allowed() {
			sc.writeDenial(w, d, false)
			return
		}
		out := r.Clone(r.Context())
		out.Body = http.MaxBytesReader(w, r.Body, sc.s.maxBody)
		out.URL.Path, out.URL.RawPath, out.URL.RawQuery = d.path, "", d.query
		out.RequestURI = out.URL.RequestURI()
		// Connection names headers a proxy in next would drop: the client
		// could have it drop the identity headers set here.
		out.Header.Del("Connection")
		stripCredentialAndIdentity(out.Header)
		sc.stripConfigured(out.Header)
		setIdentity(out.Header, d.id, false)
		if d.id != nil {
			out = out.WithContext(context.WithValue(out.Context(), identityKey{}, d.id.public()))
		}
		setReplaced(w.Header(), d.id)
		if d.hold == nil {
			next.ServeHTTP(w, out)
			return
		}
		setRemaining(w.Header(), d.hold)
		mw := &meteredWriter{ResponseWriter: w, h: d.hold, rt: d.rt}
		// Charged even when next panics: the request may have cost.
		defer mw.settle()
		next.ServeHTTP(mw, out)
	})
}

// meteredWriter charges a metered request from next's answer: its usage
// header once the header is written, or the OpenAI usage read from the body
// as it is written.
type meteredWriter struct {
	http.ResponseWriter
	h           *hold
	rt          *route
	usage       *usageBody
	wroteHeader bool
}

func (m *meteredWriter) WriteHeader(code int) {
	if !m.wroteHeader && code >= 200 {
		m.wroteHeader = true
		m.begin()
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	if !m.wroteHeader {
		m.WriteHeader(http.StatusOK)
	}
	if m.usage != nil {
		m.usage.consume(p)
	}
	return m.ResponseWriter.Write(p)
}

// Flush keeps streamed answers (server-sent events) streaming.
func (m *meteredWriter) Flush() { _ = http.NewResponseController(m.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the writer underneath.
func (m *meteredWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

// begin starts reading usage when the answer's header is final.
func (m *meteredWriter) begin() {
	h := m.Header()
	switch {
	case m.rt.usageHeader != "":
		m.h.settle(m.h.usageFromHeader(m.rt, h.Get(m.rt.usageHeader)))
	case m.rt.openaiUsage:
		if ce := h.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
			m.h.settle(m.h.fallback(m.rt, "openai", fallbackEncoding))
			return
		}
		mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
		m.usage = &usageBody{h: m.h, rt: m.rt, sse: mt == "text/event-stream"}
	}
}

// settle charges what begin and the body did not: the usage read, or the
// route's cost (settle is once, so what was charged stays).
func (m *meteredWriter) settle() {
	switch {
	case m.usage != nil:
		m.usage.finish()
	case m.wroteHeader && m.rt.usageHeader == "" && !m.rt.openaiUsage:
		m.h.settle(m.rt.cost)
	case !m.wroteHeader:
		// No answer at all (next returned without writing, or panicked):
		// an empty 200 for net/http, which says nothing of its usage.
		switch {
		case m.rt.usageHeader != "":
			m.h.settle(m.h.fallback(m.rt, "header", fallbackMissing))
		case m.rt.openaiUsage:
			m.h.settle(m.h.fallback(m.rt, "openai", fallbackMissing))
		default:
			m.h.settle(m.rt.cost)
		}
	}
}

// AuthHandler serves what auth_listen serves: /healthz, /metrics (this
// verifier's Prometheus registry) and, with a gateway configured, /verify.
// An embedding service mounts it on an internal listener.
func (sc *Sidecar) AuthHandler() http.Handler { return sc.authHandler() }
