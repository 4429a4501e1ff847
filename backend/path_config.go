package backend

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// apiAddrEnv is read from the plugin's environment for the default issuer.
// Vault does not tell plugins its api_addr, so an operator passes it at
// registration: vault plugin register -env VAULT_API_ADDR=https://vault:8200 ...
const apiAddrEnv = "VAULT_API_ADDR"

type config struct {
	Issuer           string        `json:"issuer,omitempty"`
	SigningAlgorithm string        `json:"signing_algorithm"`
	RotationPeriod   time.Duration `json:"rotation_period"`
	VerificationTTL  time.Duration `json:"verification_ttl"`
	// NextKeyLead: zero in configs stored before it existed (nextKeyLead).
	NextKeyLead time.Duration `json:"next_key_lead,omitempty"`
}

func defaultConfig() *config {
	return &config{
		SigningAlgorithm: jwtverify.AlgEdDSA,
		RotationPeriod:   24 * time.Hour,
		VerificationTTL:  24 * time.Hour,
		NextKeyLead:      defaultNextKeyLead,
	}
}

// issuer is the configured issuer, else the mount's URL under VAULT_API_ADDR.
func (c *config) issuer(mountPoint string) (string, error) {
	if c.Issuer != "" {
		return c.Issuer, nil
	}
	if addr := strings.TrimRight(os.Getenv(apiAddrEnv), "/"); addr != "" && mountPoint != "" {
		return addr + "/v1/" + strings.TrimSuffix(mountPoint, "/"), nil
	}
	return "", fmt.Errorf("no issuer: write keybroker/config issuer=<this mount's URL, e.g. https://vault.example.com:8200/v1/keybroker>, or register the plugin with -env %s=<Vault's api_addr>", apiAddrEnv)
}

// issuer returns the effective issuer, or, when there is none, a 400 telling
// the operator how to set one. An issuer derived from VAULT_API_ADDR is
// stored as the config's issuer when pin is set: by the mint of the first
// token that carries it (pinIssuer), never by a read, discovery or a
// verification, which anyone can send and which change nothing.
func (b *backend) issuer(ctx context.Context, req *logical.Request, pin bool) (string, *logical.Response, error) {
	cfg, err := b.configs.get(ctx, req.Storage, "")
	if err != nil {
		return "", nil, err
	}
	if cfg.Issuer != "" {
		return cfg.Issuer, nil, nil
	}
	iss, err := cfg.issuer(req.MountPoint)
	if err != nil {
		return "", logical.ErrorResponse(err.Error()), nil
	}
	if !pin {
		return iss, nil, nil
	}
	// Whether it stored it or found one stored meanwhile, the config in
	// memory is older.
	defer b.configs.forget("")
	if err := b.signer.pinIssuer(ctx, req.Storage, iss, b.Logger()); err != nil {
		return "", nil, err
	}
	return iss, nil, nil
}

// storedConfig is getConfig as storedCache loads it: the config has no
// name.
func storedConfig(ctx context.Context, s logical.Storage, _ string) (*config, error) {
	return getConfig(ctx, s)
}

// getConfig reads the config from storage, for a writer (signer.configure,
// pinIssuer), which changes it; readers read b.configs.get.
func getConfig(ctx context.Context, s logical.Storage) (*config, error) {
	c, err := getJSON[config](ctx, s, configPath)
	if err != nil || c == nil {
		return defaultConfig(), err
	}
	return c, nil
}

func pathConfig(b *backend) *framework.Path {
	fields := map[string]*framework.FieldSchema{
		"issuer": {
			Type:        framework.TypeString,
			Description: "iss of agent JWTs, an https URL (http on loopback). Default: this mount's URL under the " + apiAddrEnv + " the plugin was registered with, stored here when the first token is minted with it, so that a later registration (an upgrade) does not change it. Empty: derive it again.",
		},
		"signing_algorithm": {
			Type:          framework.TypeString,
			Description:   "Algorithm of new signing keys: EdDSA (default), ES256 or RS256. A change rotates the signing key as a rotation does: a key of the new algorithm is published in the JWKS now and signs next_key_lead later.",
			AllowedValues: []interface{}{jwtverify.AlgEdDSA, jwtverify.AlgES256, jwtverify.AlgRS256},
			DisplayAttrs:  &framework.DisplayAttributes{Value: jwtverify.AlgEdDSA},
		},
		"rotation_period": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long each signing key signs before the next one takes over, by itself, on the active node; the next key is published next_key_lead before that. Default: 24h; minimum 1m; longer than next_key_lead.",
			DisplayAttrs: &framework.DisplayAttributes{Value: "24h"},
		},
		"verification_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long a rotated-out public key stays in the JWKS. Must be at least every role's token_max_ttl. Default: 24h.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Verification TTL", Value: "24h"},
		},
		"next_key_lead": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long a new signing key is published in the JWKS before it signs (on rotation, a change of signing_algorithm and rotate). Set it above the longest time any verifier caches the JWKS: jwx's jwk.Cache refreshes every 15m by default, jose's createRemoteJWKSet every 10m. The JWKS's Cache-Control max-age is half of it, at most 60s. Default: 1h; minimum 2s; shorter than rotation_period.",
			DisplayAttrs: &framework.DisplayAttributes{Value: "1h"},
		},
	}
	read := merged(echoed(fields), map[string]*framework.FieldSchema{
		"effective_issuer": out(framework.TypeString, "The issuer in use: issuer, else this mount's URL under "+apiAddrEnv+"; absent, with a warning, when there is none."),
		"signing_kid":      out(framework.TypeString, "kid of the key that signs now."),
		"next_kid":         out(framework.TypeString, "kid of the next key: in the JWKS already, signing from next_signs_at. Absent when no key waits."),
		"next_signs_at":    out(framework.TypeTime, "When the next key starts signing (RFC 3339). Absent when no key waits."),
	})
	return &framework.Path{
		Pattern:      "config$",
		Fields:       fields,
		DisplayAttrs: pathAttrs(""),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation:   operationAs("", "configuration", b.pathConfigRead, answers(read)),
			logical.UpdateOperation: operationAs("configure", "", b.pathConfigWrite, noContent()),
		},
		HelpSynopsis: "Configure agent JWT signing.",
		HelpDescription: `Sets the issuer of agent JWTs and how their signing keys are made and
rotated. Signing keys are created and kept by the plugin in Vault storage and
never leave it; keybroker/jwks publishes their public halves.

A new signing key is published in the JWKS next_key_lead before it signs, so
verifiers that cache the JWKS for less than that know it before they meet a
token it signed. Every rotation_period the active node publishes the next
key; writing a new signing_algorithm does the same with a key of the new
algorithm (tokens of the old one verify until verification_ttl after it
stops signing). keybroker/rotate rotates by hand, immediate=true without
the lead. A read shows the key that signs (signing_kid) and the one that
waits, with when it takes over (next_kid, next_signs_at).

Without an issuer written here, the first mint, verify, discovery or read of
this path derives it from the VAULT_API_ADDR the plugin was registered with
(-env) and stores it here: it survives a later registration without -env or
with another address (an upgrade). Write issuer to change it (every token
minted before then fails at verifiers configured with the old one).`,
	}
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	// The issuer in use, stored if it was derived only now.
	iss, noIssuer, err := b.issuer(ctx, req, false)
	if err != nil {
		return nil, err
	}
	c, err := b.configs.get(ctx, req.Storage, "")
	if err != nil {
		return nil, err
	}
	resp := &logical.Response{Data: map[string]interface{}{
		"issuer":            c.Issuer,
		"signing_algorithm": c.SigningAlgorithm,
		"rotation_period":   int64(c.RotationPeriod.Seconds()),
		"verification_ttl":  int64(c.VerificationTTL.Seconds()),
		"next_key_lead":     int64(c.nextKeyLead().Seconds()),
	}}
	if noIssuer != nil {
		resp.AddWarning(noIssuer.Error().Error())
	} else {
		resp.Data["effective_issuer"] = iss
	}
	st, err := b.signer.current(ctx, req.Storage, b.Logger())
	if err != nil {
		return nil, err
	}
	resp.Data["signing_kid"] = st.kid
	if st.next != nil {
		resp.Data["next_kid"] = st.next.KID
		resp.Data["next_signs_at"] = st.next.signsFrom().UTC().Format(time.RFC3339Nano)
	}
	return resp, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// Dropped once written, before the write answers (storedCache).
	defer b.configs.forget("")
	return b.signer.configure(ctx, req.Storage, time.Now(), b.Logger(), func(c *config) (*logical.Response, error) {
		return editConfig(ctx, req.Storage, c, d)
	})
}

// editConfig applies a config write to c; a response rejects it.
func editConfig(ctx context.Context, s logical.Storage, c *config, d *framework.FieldData) (*logical.Response, error) {
	if v, ok := d.GetOk("issuer"); ok {
		c.Issuer = v.(string)
	}
	if v, ok := d.GetOk("signing_algorithm"); ok {
		c.SigningAlgorithm = v.(string)
	}
	if v, ok := d.GetOk("rotation_period"); ok {
		c.RotationPeriod = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("verification_ttl"); ok {
		c.VerificationTTL = time.Duration(v.(int)) * time.Second
	}
	// A config stored before the lead existed has the default; one written
	// now is checked as written (0 too).
	lead := c.nextKeyLead()
	if v, ok := d.GetOk("next_key_lead"); ok {
		lead = time.Duration(v.(int)) * time.Second
		c.NextKeyLead = lead
	}

	// Only an issuer written now: one derived from VAULT_API_ADDR and stored
	// (plain http to a Vault on a private network, say) is kept as it was.
	if v, ok := d.GetOk("issuer"); ok && v.(string) != "" {
		if err := validateIssuer(c.Issuer); err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
	}
	switch c.SigningAlgorithm {
	case jwtverify.AlgEdDSA, jwtverify.AlgES256, jwtverify.AlgRS256:
	default:
		return logical.ErrorResponse("signing_algorithm must be EdDSA, ES256 or RS256, got %q", c.SigningAlgorithm), nil
	}
	if c.RotationPeriod < time.Minute {
		return logical.ErrorResponse("rotation_period must be at least 1m"), nil
	}
	if msg := validateNextKeyLead(lead, c.RotationPeriod); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	// Every role's longest token must stay verifiable after a rotation.
	names, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	for _, name := range names {
		r, err := getRole(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if r != nil && r.TokenMaxTTL > c.VerificationTTL {
			return logical.ErrorResponse("verification_ttl (%s) is shorter than role %q's token_max_ttl (%s): its tokens would outlive the keys that verify them",
				c.VerificationTTL, name, r.TokenMaxTTL), nil
		}
	}
	return nil, nil
}

// validateNextKeyLead checks the lead against rotation_period: a key
// signs for rotation_period and its successor is published the lead
// before, while it signs.
func validateNextKeyLead(lead, rotationPeriod time.Duration) string {
	switch {
	case lead < minNextKeyLead:
		return fmt.Sprintf("next_key_lead must be at least %s, got %s", minNextKeyLead, lead)
	case lead >= rotationPeriod:
		return fmt.Sprintf("next_key_lead (%s) must be shorter than rotation_period (%s): the next key is published that long before the signing key's period ends; lower next_key_lead or raise rotation_period", lead, rotationPeriod)
	}
	return ""
}

// validateIssuer requires an absolute https URL, or http on loopback (dev).
func validateIssuer(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("issuer %q must be an absolute URL without query or fragment", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if h := u.Hostname(); h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1" {
			return nil
		}
	}
	return fmt.Errorf("issuer %q must be https (http only on loopback)", s)
}
