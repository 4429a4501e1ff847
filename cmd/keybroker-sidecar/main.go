// Command keybroker-sidecar checks keybroker API keys and agent JWTs in front
// of a service: as a reverse proxy (-listen, -upstream) and as an auth
// endpoint for nginx, Traefik and Envoy (-auth-listen, path /verify), and as
// Envoy's ext_authz gRPC service (-grpc-listen).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keybroker/keybroker/internal/version"
	"github.com/keybroker/keybroker/sidecar"
	"github.com/keybroker/keybroker/sidecar/extauthz"
)

func main() {
	configPath := flag.String("config", "", "HCL configuration file (required)")
	listen := flag.String("listen", "", "reverse proxy address (overrides listen)")
	authListen := flag.String("auth-listen", "", "address of /verify, /healthz and /metrics (overrides auth_listen)")
	upstream := flag.String("upstream", "", "URL requests are forwarded to (overrides upstream)")
	grpcListen := flag.String("grpc-listen", "", "address of Envoy's ext_authz gRPC service (overrides grpc_listen)")
	logLevel := flag.String("log-level", "", "trace, debug, info, warn or error (overrides log_level)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	checkConfig := flag.Bool("check-config", false, "validate the configuration, print the effective settings as JSON and exit (contacts nothing)")
	flag.Parse()
	if *showVersion {
		fmt.Println("keybroker-sidecar", version.Version)
		return
	}
	if *configPath == "" {
		fmt.Fprintln(os.Stderr, "keybroker-sidecar: -config is required")
		flag.Usage()
		os.Exit(2)
	}
	cfg, err := sidecar.ParseConfigFile(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "keybroker-sidecar: %v\n", err)
		os.Exit(2)
	}
	for flagValue, field := range map[*string]*string{
		listen: &cfg.Listen, authListen: &cfg.AuthListen, upstream: &cfg.Upstream, grpcListen: &cfg.GRPCListen, logLevel: &cfg.LogLevel,
	} {
		if *flagValue != "" {
			*field = *flagValue
		}
	}
	if *checkConfig {
		out, err := sidecar.CheckConfig(cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "keybroker-sidecar: %s: %v\n", *configPath, err)
			os.Exit(2)
		}
		fmt.Println(string(out))
		return
	}
	sc, err := sidecar.New(cfg, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "keybroker-sidecar: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, sc, cfg.GRPCListen); err != nil {
		fmt.Fprintf(os.Stderr, "keybroker-sidecar: %v\n", err)
		os.Exit(1)
	}
}

// serve opens the sidecar's listeners and, with grpc_listen, Envoy's
// ext_authz over gRPC beside them, and serves until ctx ends.
func serve(ctx context.Context, sc *sidecar.Sidecar, grpcListen string) error {
	l, err := sc.Listen()
	if err != nil {
		return err
	}
	if grpcListen != "" {
		g, err := extauthz.Listen(sc, grpcListen)
		if err != nil {
			l.Close()
			return err
		}
		l.Also = append(l.Also, g)
	}
	return sc.Serve(ctx, l)
}
