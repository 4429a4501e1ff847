// Package extauthz is Envoy's ext_authz over gRPC
// (envoy.service.auth.v3.Authorization/Check) for keybroker-sidecar's
// grpc_listen. It is one more front end of the sidecar: the request Envoy
// reports is decided by sidecar.Check like every other, and the answer is
// the one the HTTP paths give, in Envoy's message types. Envoy then does
// what it says: on allow it sets the identity headers and removes the
// credential before the upstream; on deny it sends the denial as its own
// reply.
//
// It is a package of its own so that a Go service embedding the sidecar
// (sidecar.Middleware) links no gRPC and no Envoy types: only the
// keybroker-sidecar binary imports it.
//
// keybroker-sidecar serves it beside its HTTP listeners:
//
//	l, _ := sc.Listen()
//	g, _ := extauthz.Listen(sc, cfg.GRPCListen)
//	l.Also = append(l.Also, g)
//	err := sc.Serve(ctx, l)
package extauthz
