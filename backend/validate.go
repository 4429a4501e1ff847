package backend

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Caps on request sizes. They keep storage entries and verify answers small
// and are documented in the README.
const (
	maxNameLength    = 128
	maxScopes        = 64
	maxScopeLength   = 128
	maxCIDRs         = 32
	maxMetadataPairs = 32
	maxMetadataKey   = 128
	maxMetadataValue = 512
	maxTenantLength  = 128
)

// reservedRoleNames are the role names that would collide with a fixed path
// beside keys/<role> and token/<role>: keys/id/, token/refresh,
// token/exchange. This is the one list; the README's role-name rule quotes it.
var reservedRoleNames = map[string]bool{"id": true, "refresh": true, "exchange": true}

// roleNameRegexp is what the roles/<name> path accepts as a name; ".." is
// refused apart (validateRoleName), since Vault's storage refuses any key
// holding it.
var roleNameRegexp = regexp.MustCompile("^" + framework.GenericNameRegex("name") + "$")

// validateRoleName checks a role name given in a field or a path: the role
// path's form, not reserved, no "..".
func validateRoleName(field, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s: a role name is required", field)
	case len(name) > maxNameLength:
		return fmt.Errorf("%s: a role name is at most %d characters", field, maxNameLength)
	case !roleNameRegexp.MatchString(name) || strings.Contains(name, ".."):
		return fmt.Errorf("%s: %q is not a role name (letters, digits, '_', '-' and '.', beginning and ending with a letter, digit or '_', no '..')", field, name)
	case reservedRoleNames[name]:
		return fmt.Errorf("%s: %q is reserved (reserved role names: exchange, id, refresh)", field, name)
	}
	return nil
}

// tenantRegexp keeps tenants usable as path segments (a later tenants/<name>
// path) and as HTTP header values.
var tenantRegexp = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// validateRequest turns conversion errors and fields the path does not know
// into a 400. Vault's framework only warns about unknown fields; for a
// credential broker a typo such as "scope=" silently minting a key with the
// role's default scopes is worse than an error.
func validateRequest(d *framework.FieldData) *logical.Response {
	var problems []string
	for k := range d.Raw {
		if _, ok := d.Schema[k]; ok {
			if err := checkFieldType(d, k); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return logical.ErrorResponse(strings.Join(problems, "; "))
	}
	var unknown []string
	for k := range d.Raw {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return logical.ErrorResponse("unknown field(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

// validateScopes checks scope tokens against RFC 6749 section 3.3 and the
// caps, and returns them de-duplicated in their original order.
func validateScopes(field string, scopes []string) ([]string, error) {
	if len(scopes) > maxScopes {
		return nil, fmt.Errorf("%s: at most %d scopes, got %d", field, maxScopes, len(scopes))
	}
	out := make([]string, 0, len(scopes))
	seen := make(map[string]bool, len(scopes))
	for _, s := range scopes {
		if s == "" || len(s) > maxScopeLength {
			return nil, fmt.Errorf("%s: each scope must be 1 to %d characters", field, maxScopeLength)
		}
		for i := 0; i < len(s); i++ {
			// scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
			if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return nil, fmt.Errorf("%s: scope %q has a character outside RFC 6749 scope-token (printable ASCII without space, quote or backslash)", field, s)
			}
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out, nil
}

// parseCIDRs parses CIDRs (a bare address is a /32 or /128) into canonical,
// masked form.
func parseCIDRs(field string, in []string) ([]netip.Prefix, error) {
	if len(in) > maxCIDRs {
		return nil, fmt.Errorf("%s: at most %d CIDRs, got %d", field, maxCIDRs, len(in))
	}
	out := make([]netip.Prefix, 0, len(in))
	for _, s := range in {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("%s: %q is not a CIDR block or IP address", field, s)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%s: %q is an IPv4-mapped IPv6 block; write it as IPv4", field, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// cidrsAllow reports whether addr falls in one of cidrs (stored canonical
// strings). No CIDRs means no restriction; an unknown address with CIDRs set
// is denied.
func cidrsAllow(cidrs []string, addr netip.Addr) bool {
	if len(cidrs) == 0 {
		return true
	}
	if !addr.IsValid() {
		return false
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err == nil && p.Contains(addr) {
			return true
		}
	}
	return false
}

// parseRemoteAddr accepts an IP address, with or without a port ("ip:port" or
// "[ipv6]:port"). IPv4-mapped IPv6 addresses are unmapped so that they match
// IPv4 CIDRs.
func parseRemoteAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			return netip.Addr{}, fmt.Errorf("remote_addr %q is not an IP address or IP:port", s)
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone(""), nil
}

// validateText checks a free-text field (names, metadata) for length and
// control characters, which would make logs and headers ambiguous.
func validateText(field, s string, max int) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s must be valid UTF-8", field)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return fmt.Errorf("%s must be at most %d characters, got %d", field, max, n)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s must not contain control characters", field)
		}
	}
	return nil
}

func validateMetadata(field string, md map[string]string) error {
	if len(md) > maxMetadataPairs {
		return fmt.Errorf("%s: at most %d entries, got %d", field, maxMetadataPairs, len(md))
	}
	for k, v := range md {
		if k == "" {
			return fmt.Errorf("%s: keys must not be empty", field)
		}
		if err := validateText(field+" key", k, maxMetadataKey); err != nil {
			return err
		}
		if err := validateText(fmt.Sprintf("%s[%q]", field, k), v, maxMetadataValue); err != nil {
			return err
		}
	}
	return nil
}

func validateTenant(t string) error {
	if t == "" {
		return nil
	}
	if len(t) > maxTenantLength || !tenantRegexp.MatchString(t) {
		return fmt.Errorf("tenant %q must be 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", t, maxTenantLength)
	}
	return nil
}

// dpopBinding is the thumbprint a mint asks to bind to (dpop_jkt, or
// computed from dpop_jwk), "" for a bearer credential.
func dpopBinding(jkt, jwk string) (string, error) {
	switch {
	case jkt != "" && jwk != "":
		return "", fmt.Errorf("give dpop_jkt or dpop_jwk, not both")
	case jwk != "":
		if len(jwk) > 8<<10 {
			return "", fmt.Errorf("dpop_jwk is over 8 KiB: not a public key")
		}
		tp, err := jwtverify.Thumbprint([]byte(jwk))
		if err != nil {
			return "", fmt.Errorf("dpop_jwk: %w", err)
		}
		return tp, nil
	case jkt != "" && !jwtverify.ValidJKT(jkt):
		return "", fmt.Errorf("dpop_jkt must be a SHA-256 JWK thumbprint (RFC 7638): 43 characters of unpadded base64url")
	}
	return jkt, nil
}
