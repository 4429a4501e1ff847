package credscan

import (
	"net/url"
	"strings"

	"github.com/keybroker/keybroker/contract"
)

// queryCredentialParams are query parameters a credential might be sent in,
// compared without regard to case.
var queryCredentialParams = []string{"access_token", "api_key", "apikey", "key", "token"}

// QueryDenial is the reason to refuse a raw query, or "": a parameter
// named like a credential, a credential in any name or value (decoded, as
// the upstream reads it), a method override (_method), or a broken escape,
// which is refused rather than guessed at (credential_in_query: it may
// hide any of these). Both '&' and ';' separate parameters (servers
// differ).
func QueryDenial(rawQuery string) string {
	var cs scan
	for rawQuery != "" {
		var pair string
		if i := strings.IndexAny(rawQuery, "&;"); i >= 0 {
			pair, rawQuery = rawQuery[:i], rawQuery[i+1:]
		} else {
			pair, rawQuery = rawQuery, ""
		}
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		k, err := url.QueryUnescape(k)
		if err != nil {
			return contract.ReasonCredentialInQuery
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return contract.ReasonCredentialInQuery
		}
		for _, p := range queryCredentialParams {
			if strings.EqualFold(k, p) {
				return contract.ReasonCredentialInQuery
			}
		}
		if cs.found(k) || cs.found(v) {
			return contract.ReasonCredentialInQuery
		}
		if methodOverrideParam(k) {
			return contract.ReasonMethodOverride
		}
	}
	return ""
}

// methodOverrideParam: a query parameter that Laravel, Symfony, Spring's
// HiddenHttpMethodFilter or Express's method-override would take for the
// request's method, in any case, and in the names PHP turns into _method
// (it drops leading spaces and reads ' ', '.' and '[' as '_'), with or
// without brackets after it (_method[], an array to qs and PHP).
func methodOverrideParam(name string) bool {
	name = strings.TrimLeft(name, " ")
	const m = "method"
	if len(name) < 1+len(m) || !strings.ContainsRune("_. [", rune(name[0])) || !strings.EqualFold(name[1:1+len(m)], m) {
		return false
	}
	return len(name) == 1+len(m) || name[1+len(m)] == '['
}
