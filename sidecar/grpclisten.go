package sidecar

import (
	"fmt"
	"net"
)

// checkGRPCListen validates grpc_listen, which keybroker-sidecar serves
// Envoy's ext_authz on (package extauthz): the gRPC service answers only
// peers in trusted_proxies, as /verify does, so it needs some. It is here,
// not there, so that checking a configuration links no gRPC.
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
