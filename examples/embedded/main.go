// Command embedded is a Go service that verifies keybroker credentials in
// process, with no sidecar: the same configuration file and the same
// decisions as keybroker-sidecar (routes, API keys, JWTs, DPoP, revocations,
// budgets), as net/http middleware.
//
//	go run ./examples/embedded -config examples/sidecar.hcl -listen 127.0.0.1:8080
//
// It serves GET /v1/read/hello, under the route "/v1/read" (scope read) that
// examples/sidecar.hcl and make dev's .dev/sidecar.hcl both hold. Beside a
// running make dev, with the AppRole make dev gave its sidecar and the key
// make dev printed:
//
//	go run ./examples/embedded -config .dev/sidecar.hcl -listen 127.0.0.1:8090
//	curl -i -H 'X-API-Key: <the key make dev printed>' http://127.0.0.1:8090/v1/read/hello
//
// The upstream and listen settings of the file are not used here, nor is
// grpc_listen: Envoy's ext_authz over gRPC is in sidecar/extauthz, which
// only keybroker-sidecar imports, so this service links no gRPC.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/sidecar"
)

func main() {
	configPath := flag.String("config", "", "keybroker-sidecar HCL configuration (vault, audiences, routes, ...)")
	listen := flag.String("listen", "127.0.0.1:8080", "address this service listens on")
	flag.Parse()
	cfg, err := sidecar.ParseConfigFile(*configPath)
	if err != nil {
		log.Fatal(err)
	}
	verifier, err := sidecar.New(cfg, nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Logs in to Vault, follows the JWKS, revocations and key records
	// (New started nothing).
	if err := verifier.Start(ctx); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	// A path the configuration routes: one it does not is denied (403 no_route)
	// before the mux sees it.
	mux.HandleFunc("GET /v1/read/hello", func(w http.ResponseWriter, r *http.Request) {
		id, _ := sidecar.IdentityFrom(r.Context())
		fmt.Fprintf(w, "hello %s (role %s, scopes %v)\n", id.Subject, id.Role, id.Scopes)
	})
	srv := &http.Server{Addr: *listen, Handler: verifier.Middleware(mux), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	// After the last request: report budget use, give back the rest.
	verifier.Stop()
}
