package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
)

// Listeners are what Serve serves on. Auth is required; Proxy may be nil
// when there is no upstream.
type Listeners struct {
	Proxy, Auth net.Listener
	// Also are front ends served beside the HTTP ones, such as
	// keybroker-sidecar's Envoy ext_authz over gRPC (package extauthz).
	Also []Server
}

// A Server is a front end Serve runs beside its HTTP servers: it asks for
// decisions through Check.
type Server interface {
	// Serve serves until Shutdown; it returns nil once shut down.
	Serve() error
	// Shutdown stops taking requests and lets those in flight finish
	// until ctx ends, then ends them; it returns when they have.
	Shutdown(ctx context.Context) error
}

// Listen opens auth_listen and, with an upstream, listen, for Serve.
func (sc *Sidecar) Listen() (Listeners, error) {
	var l Listeners
	var err error
	if l.Auth, err = net.Listen("tcp", sc.s.authListen); err != nil {
		return Listeners{}, fmt.Errorf("auth_listen: %w", err)
	}
	if sc.s.upstream != nil {
		if l.Proxy, err = net.Listen("tcp", sc.s.listen); err != nil {
			l.Close()
			return Listeners{}, fmt.Errorf("listen: %w", err)
		}
	}
	return l, nil
}

// Close closes the listeners and shuts the front ends in Also down, for a
// caller that will not Serve them after all.
func (l Listeners) Close() {
	for _, ln := range []net.Listener{l.Proxy, l.Auth} {
		if ln != nil {
			ln.Close()
		}
	}
	now, cancel := context.WithCancel(context.Background())
	cancel() // nothing is in flight
	for _, s := range l.Also {
		_ = s.Shutdown(now)
	}
}

// Serve starts the sidecar (Start), serves the reverse proxy, the auth
// endpoint and l.Also until ctx ends or one of them fails, then stops
// taking requests, lets those in flight finish (within 5s) and stops the
// sidecar (Stop), so that what they used is reported. Vault being down at
// start delays readiness (/healthz), not serving.
func (sc *Sidecar) Serve(ctx context.Context, l Listeners) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := sc.Start(ctx); err != nil {
		l.Close()
		return err
	}
	servers := []*http.Server{sc.server(sc.authHandler())}
	lns := []net.Listener{l.Auth}
	if l.Proxy != nil {
		servers = append(servers, sc.server(sc.proxyHandler()))
		lns = append(lns, l.Proxy)
	}
	errc := make(chan error, len(servers)+len(l.Also))
	for i := range servers {
		go func(srv *http.Server, ln net.Listener) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}(servers[i], lns[i])
	}
	for _, s := range l.Also {
		go func() {
			if err := s.Serve(); err != nil {
				errc <- err
			}
		}()
	}
	if sc.s.grpcListen != "" && len(l.Also) == 0 {
		sc.log.Warn("grpc_listen is set but nothing serves it (only keybroker-sidecar does); gRPC ext_authz is off", "grpc_listen", sc.s.grpcListen)
	}
	sc.log.Info("serving", "auth", l.Auth.Addr().String(), "proxy", addrOf(l.Proxy), "also", alsoAddrs(l.Also), "upstream", sc.s.upstream)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sc.shutdown(servers, l.Also)
	sc.Stop()
	return err
}

// shutdown stops every front end at once, each letting what is in flight
// finish within the same bound (Envoy holds its requests until its checks
// answer), before Stop reports what they used.
func (sc *Sidecar) shutdown(servers []*http.Server, also []Server) {
	ctx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	var wg sync.WaitGroup
	for _, s := range also {
		wg.Go(func() { _ = s.Shutdown(ctx) })
	}
	for _, srv := range servers {
		_ = srv.Shutdown(ctx)
	}
	wg.Wait()
}

// server applies the configured limits, so a client cannot hold a
// connection or a file descriptor open for nothing. There is no write
// timeout: a streamed answer (server-sent events) may rightly take long.
func (sc *Sidecar) server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: sc.s.readHeaderTimeout,
		ReadTimeout:       sc.s.readTimeout,
		IdleTimeout:       sc.s.idleTimeout,
		MaxHeaderBytes:    sc.s.maxHeaderBytes,
		ErrorLog:          sc.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// alsoAddrs are the addresses of the front ends in Also that say theirs
// (extauthz.Server does), for the log.
func alsoAddrs(also []Server) []string {
	var out []string
	for _, s := range also {
		if a, ok := s.(interface{ Addr() net.Addr }); ok {
			out = append(out, a.Addr().String())
		}
	}
	return out
}
