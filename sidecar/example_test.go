package sidecar_test

import (
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar"
)

// A Go service verifies keybroker credentials in process: the middleware
// decides every request as keybroker-sidecar would (routes, scopes, API
// keys, agent JWTs, DPoP, revocations, budgets) and hands the handler the
// caller's identity, never the credential. Start (not called here) logs in
// to Vault and follows the JWKS and the feeds; until they are read, a
// credential is refused, and a public route still answers.
func ExampleSidecar_Middleware() {
	cfg := &sidecar.Config{
		Audiences: []string{"orders"},
		LogLevel:  "off",
		Vault:     &sidecar.VaultConfig{Address: "http://127.0.0.1:8200", RoleID: "sidecar", SecretIDFile: "/run/secrets/secret-id"},
		Routes: []sidecar.RouteConfig{
			{PathPrefix: "/health", Public: true},
			{PathPrefix: "/orders", Scopes: []string{"orders:read"}},
		},
	}
	verifier, err := sidecar.New(cfg, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer verifier.Stop()

	handler := verifier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := sidecar.IdentityFrom(r.Context()); ok {
			fmt.Fprintf(w, "hello %s", id.Subject)
			return
		}
		fmt.Fprint(w, "hello, whoever you are")
	}))

	for _, req := range []*http.Request{
		httptest.NewRequest("GET", "/health", nil),
		httptest.NewRequest("GET", "/orders/42", nil),
		httptest.NewRequest("GET", "/orders/42?api_key=kb_leaked", nil),
	} {
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, req)
		fmt.Println(req.URL, w.Code, w.Header().Get(contract.HeaderReason), strings.TrimSpace(w.Body.String()))
	}
	// Output:
	// /health 200  hello, whoever you are
	// /orders/42 401 no_credential {"error":"invalid_request","error_description":"no credential: send the API key or token in the Authorization header as Bearer","reason":"no_credential"}
	// /orders/42?api_key=kb_leaked 400 credential_in_query {"error":"invalid_request","error_description":"a credential in the query string is refused: send it in the Authorization header","reason":"credential_in_query"}
}
