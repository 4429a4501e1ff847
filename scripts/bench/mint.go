package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The mint rows: a key, a JWT and an exchange against Vault's own token
// create on the same server, each a ratio to it within the run (issue 26:
// at least 1.0x). Run alone with -only mint.

func init() {
	sections = append(sections, section{name: "mint", run: (*bench).mintRows})
}

// mintSubjects is how many subject tokens the exchange row cycles through:
// each actor may hold 1,000 live tokens exchanged from one token
// (maxDerived), and a real agent exchanges a token a few times, not
// thousands.
const mintSubjects = 2000

// mintRounds is how many times each mint row runs, in turn with the
// others: on a shared machine the load drifts within a minute, and a ratio
// of two rows run at different moments measures the drift.
const mintRounds = 3

// mintWarmup is how long after the plugin starts a key mint still looks
// its key_id up in storage (backend keyIDSkew, 30 s): the key row measures
// the steady state after it.
const mintWarmup = 35 * time.Second

func (b *bench) mintRows(ctx context.Context) error {
	c := b.v.Client
	for path, data := range map[string]map[string]interface{}{
		"keybroker/roles/mint":      {"scopes": "read", "audiences": "svc", "ttl": "24h", "token_ttl": "1h"},
		"keybroker/roles/mint-user": {"scopes": "read", "audiences": "svc", "token_ttl": "1h"},
		"keybroker/roles/mint-tool": {"scopes": "read", "audiences": "svc", "token_ttl": "1h", "allowed_subject_roles": "mint-user"},
		"auth/token/roles/mint":     {"allowed_policies": "default", "orphan": true},
	} {
		if _, err := c.Logical().WriteWithContext(ctx, path, data); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	// An exchange needs callers with Vault entities: two AppRole logins.
	policy := `path "keybroker/token/*" { capabilities = ["update"] }`
	user, err := b.v.LoginAs(ctx, "mint-user", policy)
	if err != nil {
		return err
	}
	tool, err := b.v.LoginAs(ctx, "mint-tool", policy)
	if err != nil {
		return err
	}
	log("minting %d subject tokens for the exchange row", mintSubjects)
	var subjects, bodies []string
	for range mintSubjects {
		t, err := user.Logical().WriteWithContext(ctx, "keybroker/token/mint-user", nil)
		if err != nil {
			return err
		}
		subjects = append(subjects, t.Data["token"].(string))
		bodies = append(bodies, fmt.Sprintf(`{"role":"mint-tool","subject_token":%q}`, t.Data["token"]))
	}

	// One exchange first: a row of refusals would measure nothing.
	if _, err := tool.Logical().WriteWithContext(ctx, "keybroker/token/exchange", map[string]interface{}{
		"role": "mint-tool", "subject_token": subjects[0],
	}); err != nil {
		return fmt.Errorf("exchanging a subject token: %w", err)
	}

	if wait := mintWarmup - time.Since(b.started); wait > 0 {
		log("waiting %s: key mints past the plugin's key_id warm-up", wait.Round(time.Second))
		time.Sleep(wait)
	}
	vaultURL, root := b.v.Addr, "X-Vault-Token: "+b.v.RootToken
	b.interleaved(mintRounds, b.o.duration/2, []wrkRow{
		{"mint-vault", "Vault auth/token/create/<role>", vaultURL + "/v1/auth/token/create/mint", []string{root}, b.postScript(`{}`)},
		{"mint-key", "mint keybroker/keys/<role>", vaultURL + "/v1/keybroker/keys/mint", []string{root}, b.postScript(`{"name":"bench"}`)},
		{"mint-jwt", "mint keybroker/token/<role>", vaultURL + "/v1/keybroker/token/mint", []string{root}, b.postScript(`{}`)},
		{"mint-exchange", "exchange keybroker/token/exchange (RFC 8693)", vaultURL + "/v1/keybroker/token/exchange",
			[]string{"X-Vault-Token: " + tool.Token()}, b.cyclePostScript(bodies)},
	})

	r := b.rows
	for _, t := range []struct{ what, row string }{
		{"mint key / Vault token create", "mint-key"},
		{"mint JWT / Vault token create", "mint-jwt"},
		{"exchange / Vault token create", "mint-exchange"},
	} {
		got := 0.0
		if v := r["mint-vault"].rps; v > 0 {
			got = r[t.row].rps / v
		}
		b.target(target{t.what, got, 1, false, "x"})
	}
	return nil
}

// cyclePostScript makes wrk POST the JSON bodies in turn, one per request,
// each thread from its own starting point.
func (b *bench) cyclePostScript(bodies []string) string {
	bf := b.script("mint-bodies.txt", strings.Join(bodies, "\n")+"\n")
	return b.script("mint-cycle.lua", fmt.Sprintf(`
local bodies = {}
for line in io.lines(%q) do bodies[#bodies + 1] = line end
local i = 0
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)); i = math.random(#bodies) end
-- the -H headers (the Vault token) and the body's type: wrk.format's
-- headers replace wrk.headers
local headers = {}
function request()
  if next(headers) == nil then
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Content-Type"] = "application/json"
  end
  i = i %% #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
`, bf))
}

// wrkRow is a wrk row to run: its id, name, URL, headers and script.
type wrkRow struct {
	id, name, url string
	headers       []string
	script        string
}

// interleaved runs rows in turn, rounds times, each for d split among the
// rounds, and keeps for each its mean requests/s and latencies.
func (b *bench) interleaved(rounds int, d time.Duration, rows []wrkRow) {
	each := max(time.Second, d/time.Duration(rounds))
	for i := range rounds {
		for _, w := range rows {
			b.wrkFor(fmt.Sprintf("%s/%d", w.id, i), w.name, w.url, w.headers, w.script, each)
		}
	}
	runs := map[string]bool{}
	for _, w := range rows {
		sum := row{name: w.name}
		for i := range rounds {
			id := fmt.Sprintf("%s/%d", w.id, i)
			r := b.rows[id]
			sum.rps += r.rps / float64(rounds)
			sum.p50 += r.p50 / time.Duration(rounds)
			sum.p99 += r.p99 / time.Duration(rounds)
			delete(b.rows, id)
			runs[id] = true
		}
		b.rows[w.id] = sum
	}
	b.order = slices.DeleteFunc(b.order, func(id string) bool { return runs[id] })
	for _, w := range rows {
		b.order = append(b.order, w.id)
	}
}
