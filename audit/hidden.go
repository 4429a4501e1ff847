package audit

import (
	"sort"
)

// What the audit log HMAC'd that an answer needed, and how to show it.

// Hidden is one field an answer needed and the log HMAC'd.
type Hidden struct {
	Mount string `json:"mount"`
	Side  string `json:"side"` // request or response (data)
	Field string `json:"field"`
	Count int    `json:"entries"`
}

// fixes says how to get the hidden fields in clear from now on.
func (e *engine) fixes() ([]Hidden, []string) {
	var hs []Hidden
	byMount := map[string][2][]string{}
	for k, n := range e.hidden {
		hs = append(hs, Hidden{Mount: k.mount, Side: k.side, Field: k.field, Count: n})
	}
	sort.Slice(hs, func(i, j int) bool {
		a, b := hs[i], hs[j]
		if a.Mount != b.Mount {
			return a.Mount < b.Mount
		}
		if a.Side != b.Side {
			return a.Side < b.Side
		}
		return a.Field < b.Field
	})
	var out []string
	for _, h := range hs {
		v := byMount[h.Mount]
		if h.Side == "request" {
			v[0] = append(v[0], h.Field)
		} else {
			v[1] = append(v[1], h.Field)
		}
		byMount[h.Mount] = v
	}
	var mounts []string
	for m := range byMount {
		mounts = append(mounts, m)
	}
	sort.Strings(mounts)
	for _, m := range mounts {
		v := byMount[m]
		cmd := "vault secrets tune"
		for _, f := range v[0] {
			cmd += " -audit-non-hmac-request-keys=" + f
		}
		for _, f := range v[1] {
			cmd += " -audit-non-hmac-response-keys=" + f
		}
		out = append(out, cmd+" "+m+"   # each flag replaces the mount's list: repeat the keys already in clear (vault read sys/mounts/"+m+"tune); entries written before stay HMAC'd")
	}
	if len(hs) > 0 && e.opt.Hasher == nil {
		out = append(out, "for entries already written: pass -audit-device <path> (with VAULT_ADDR or -vault-addr, and VAULT_TOKEN allowed update on sys/audit-hash/<path>) to match the credential's id, name and lease ids by audit-hash")
	}
	return hs, out
}
