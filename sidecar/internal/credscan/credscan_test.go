package credscan

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// testJWS is a compact JWS as keybroker mints them: {"alg":"EdDSA"}.
const testJWS = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"

func genKey(t testing.TB, prefix string) string {
	t.Helper()
	k, _, err := apikey.Generate(nil, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The path recogniser finds a credential wherever a segment holds one, and
// nothing in ordinary paths.
func TestCredentialInPath(t *testing.T) {
	key, custom, refresh := genKey(t, "kb"), genKey(t, "acme2"), genKey(t, "kbrt")
	typJWS := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT", "alg" : "ES256"}`)) + ".eyJzdWIiOiJ4In0.c2ln"
	noneJWS := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + ".eyJzdWIiOiJ4In0."
	for _, path := range []string{
		"/" + key,
		"/a/" + custom + "/b",
		"/a/" + refresh,
		"/a/" + testJWS,
		"/a/" + typJWS,
		"/a/" + noneJWS,
		"/a/" + key + ".json",
		"/a/x-" + key + "_y",
		"/a/Xkb" + key[2:],  // a prefix at the end of a longer word
		"/a/9" + key,        // after a digit
		"/a/" + key + "abc", // followed by more base62
		"/a/key=" + key,
		"/a/backup_" + key + "_old",
		"/a/bearer " + testJWS,
		"/a/t=" + testJWS + "&x",
		"/a/x." + testJWS,
		"/a/" + testJWS + ".json",
		"/a/" + testJWS[:len(testJWS)-4] + "." + key,
		"/a/" + custom + "/" + testJWS,
		"/a/x-" + testJWS,
		"/a/token_" + testJWS + "_old",
	} {
		if !InPath(path) {
			t.Errorf("InPath(%q) = false, want a credential found", path)
		}
	}
	for _, path := range []string{
		"/",
		"/v1/items/1",
		"/files/report.2024.final.pdf",
		"/users/eyJohn/eyJane.doe.x",
		"/eyJhbGciOiJ.xx.y", // decodes to `{"alg":"`, no object
		"/a/" + base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","kid`)) + ".xx.yy", // no closing brace
		"/a/" + base64.RawURLEncoding.EncodeToString([]byte(`{"algorithm":"EdDSA"}`)) + ".xx.yy",
		"/a/" + base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"alg"}`)) + ".xx.yy",
		// camelCase with "eyJ" inside a word: no JWS starts there.
		"/v1/static/surveyJSLibraryBundle.min.js",
		"/v1/api/keyJsonSchemaDefinition.v2.json",
		"/v1/x/journeyJourneyMapping2024.final.pdf",
		"/music/heyJudeRemasteredVersion2009.mp3.bak",
		"/v1/eyJohnathanSmithProfilePicture.thumb.png", // a word that starts with eyJ: no header
		"/v1/eyJ" + strings.Repeat("a", 40) + ".bb.cc",
		"/a/" + key[:len(key)-2],
		"/a/" + strings.ToUpper(key),
		"/a/" + key[:len(key)-1] + string(key[len(key)-1]^1), // checksum off by one character
		"/a/" + strings.Repeat("_", 500),
		"/a/" + strings.Repeat("a_", 300),
		"/v1/users/John_Smith_profile_picture",
		"/blobs/sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		"/a/550e8400-e29b-41d4-a716-446655440000/snake_case_name_that_is_rather_long_indeed",
		"/blog/2024/05/how-we-migrated-our-payments-platform-to-event-sourcing-without-downtime-part-2",
		"/v1/objects/dGhpcyBpcyBhIGJhc2U2NCBlbmNvZGVkIGlkZW50aWZpZXIgb2YgYW4gb2JqZWN0",
		"/v1/objects/aGVsbG8td29ybGQtdGhpcy1pcy1hLWxvbmctaWQ_dGhpcy1pcy1hbm90aGVy_ZQ",
		"/v1/ids/01HV4Z8QK6Y3M2N7P9R5T1W0XC/ksuid_2ZxYB3oKqWnXwR7gLpS9vT4mE1c",
		"/static/js/main.8f3a2c1b.chunk.js",
		"/v1/a/b_c_d_e_f_g_h_i_j_k_l_m_n_o_p_q_r_s_t_u_v_w_x_y_z_aa_bb_cc_dd_ee_ff_gg",
		"/v1/tmp/kb_AAAAAAAAAAAA_" + strings.Repeat("B", 49),             // a key's shape, not its checksum
		"/v1/rpc/com.example.users.v1.UserService/GetUserProfileByEmail", // gRPC-Web
		"/v1/files/My_Document_Final_Version_2024_Revised_Copy.docx",
	} {
		if InPath(path) {
			t.Errorf("InPath(%q) = true, want none found", path)
		}
	}
}

func TestRedactPath(t *testing.T) {
	key := genKey(t, "kb")
	for in, want := range map[string]string{
		"/a/x-" + key + ".json/b/" + testJWS:                 "/a/[credential]/b/[credential]",
		"/a/" + strings.ReplaceAll(key, "_", "%5f") + "/%zz": "/a/[credential]/%zz",
		"/a/b%20c/%zz":                      "/a/b%20c/%zz",
		key + "/x":                          "[credential]/x",
		"/x/" + key:                         "/x/[credential]",
		"/x/" + key + "/":                   "/x/[credential]/",
		"/v1/static/surveyJSLibrary.min.js": "/v1/static/surveyJSLibrary.min.js",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQueryDenial(t *testing.T) {
	key := genKey(t, "kb")
	esc := url.QueryEscape
	for q, want := range map[string]string{
		"":                               "",
		"page=2":                         "",
		"page=2&&sort=x":                 "",
		"q=surveyJSLibraryBundle.min.js": "",
		"method=DELETE":                  "", // not an override anywhere
		"http_method=x&methods=a":        "",
		"q=kb_AAAAAAAAAAAA_notakey":      "",
		"access_token=x":                 contract.ReasonCredentialInQuery,
		"api_key=x":                      contract.ReasonCredentialInQuery,
		"API_KEY=x":                      contract.ReasonCredentialInQuery,
		"Access_Token=x":                 contract.ReasonCredentialInQuery,
		"access%5Ftoken=x":               contract.ReasonCredentialInQuery,
		"x=" + key + "&y=1":              contract.ReasonCredentialInQuery,
		"x=1;token=abc":                  contract.ReasonCredentialInQuery, // ';' separates for some servers
		"a=b;" + key:                     contract.ReasonCredentialInQuery,
		"x=" + testJWS:                   contract.ReasonCredentialInQuery,
		// Within a value (or a name), decoded as the upstream reads it.
		"q=Bearer+" + testJWS:                                       contract.ReasonCredentialInQuery,
		"q=Bearer%20" + testJWS:                                     contract.ReasonCredentialInQuery,
		"cb=" + esc("https://x/y?access_token="+testJWS):            contract.ReasonCredentialInQuery,
		"cb=" + esc("https://x/y?k="+key+"&z=1"):                    contract.ReasonCredentialInQuery,
		"note=my+key+is+" + key + "+ok":                             contract.ReasonCredentialInQuery,
		"f=backup-" + strings.ReplaceAll(key, "_", "%5F") + ".json": contract.ReasonCredentialInQuery,
		esc("x-"+key) + "=1":                                        contract.ReasonCredentialInQuery,
		// Method overrides, however the server spells the name.
		"_method=DELETE":        contract.ReasonMethodOverride,
		"x=1&_METHOD=delete":    contract.ReasonMethodOverride,
		"_Method=PUT":           contract.ReasonMethodOverride,
		"%5Fmethod=DELETE":      contract.ReasonMethodOverride,
		"_%6d%65thod=DELETE":    contract.ReasonMethodOverride,
		"a=1;_method=DELETE":    contract.ReasonMethodOverride,
		"_method":               contract.ReasonMethodOverride,
		"_method[]=DELETE":      contract.ReasonMethodOverride,
		"_method%5B0%5D=DELETE": contract.ReasonMethodOverride,
		".method=DELETE":        contract.ReasonMethodOverride, // PHP reads '.' as '_'
		"+method=x&y=1":         "",                            // PHP drops a leading space: "method"
		"++_method=DELETE":      contract.ReasonMethodOverride,
		"[method=DELETE":        contract.ReasonMethodOverride,
	} {
		if got := QueryDenial(q); got != want {
			t.Errorf("QueryDenial(%q) = %q, want %q", q, got, want)
		}
	}
	// A query that does not decode is refused, not skipped.
	for _, q := range []string{"x=%zz", "a=%", "%g1=2", "x=%zz&token=abc"} {
		if got := QueryDenial(q); got != contract.ReasonCredentialInQuery {
			t.Errorf("QueryDenial(%q) = %q, want refused", q, got)
		}
	}
}

// hostilePaths are built to make a scan work hard: long runs of what
// credentials are made of, and of near-credentials.
func hostilePaths(t testing.TB) map[string]string {
	key := genKey(t, strings.Repeat("q", apikey.MaxPrefixLength))
	nearKey := key[:len(key)-1] + string(key[len(key)-1]^1) // every prefix length, no checksum
	return map[string]string{
		"underscores_8k":  "/v1/" + strings.Repeat("_", 8<<10),
		"underscores_60k": "/v1/" + strings.Repeat("_", 61440),
		"eyJ_20k":         "/v1/" + strings.Repeat("eyJ", 20000),
		"eyJ_dots_20k":    "/v1/" + strings.Repeat("eyJ.", 15000),
		"headers_60k":     "/v1/" + strings.Repeat("eyJhbGciOiJBBBBBBBBB.xx.", 2560),
		"near_keys_60k":   "/v1/" + strings.Repeat(nearKey+"-", 61440/len(nearKey)),
		"key_shapes_60k":  "/v1/" + strings.Repeat("a_AAAAAAAAAAAA_"+strings.Repeat("B", 48), 61440/63),
		"mixed_60k":       "/v1/" + strings.Repeat("a_b.eyJ-", 61440/8),
		"sub_anchors_60k": "/v1/" + strings.Repeat("-eyJ", 15000) + ".xx.",
		"camel_60k":       "/v1/" + strings.Repeat("surveyJSLibraryBundle.min.js.", 2100),
	}
}

// The scan allocates nothing, on ordinary paths and on hostile ones (it
// ran 15 checksums at each '_', each failing with an allocated error).
func TestCredentialScanAllocatesNothing(t *testing.T) {
	paths := hostilePaths(t)
	paths["ordinary"] = "/v1/projects/550e8400-e29b-41d4-a716-446655440000/items/report.2024.final.pdf"
	paths["underscore_name"] = "/v1/users/John_Smith_profile_picture"
	paths["camel"] = "/v1/static/surveyJSLibraryBundle.min.js"
	for name, path := range paths {
		if n := testing.AllocsPerRun(3, func() { InPath(path) }); n != 0 {
			t.Errorf("%s: credentialInPath allocates %v times", name, n)
		}
		if n := testing.AllocsPerRun(3, func() { Redact(path) }); n != 0 {
			t.Errorf("%s: redactPath allocates %v times", name, n)
		}
	}
}

// The scan's work is linear in the path: a checksum at most once per 63
// bytes (a key's key_id, secret and checksum), each character decoded as
// a JWS header at most twice.
func TestCredentialScanLinear(t *testing.T) {
	for name, path := range hostilePaths(t) {
		var cs scan
		if cs.found(path) {
			t.Errorf("%s: a credential found", name)
		}
		if max := len(path)/63 + 1; cs.checksums > max {
			t.Errorf("%s: %d checksums for %d bytes, want at most %d", name, cs.checksums, len(path), max)
		}
		if cs.headerBytes > 2*len(path) {
			t.Errorf("%s: %d bytes decoded for %d bytes", name, cs.headerBytes, len(path))
		}
		t.Logf("%s: %d bytes, %d checksums, %d header bytes decoded", name, len(path), cs.checksums, cs.headerBytes)
	}
	// The underscores and the bare eyJs do no work at all.
	for _, name := range []string{"underscores_60k", "eyJ_20k", "eyJ_dots_20k"} {
		var cs scan
		cs.found(hostilePaths(t)[name])
		if cs.checksums != 0 || cs.headerBytes != 0 {
			t.Errorf("%s: %+v, want no checksum and no decoding", name, cs)
		}
	}
}

// go test -run '^$' -bench CredentialInPath -benchmem ./sidecar/internal/credscan/
func BenchmarkCredentialInPath(b *testing.B) {
	cases := []struct{ name, path string }{
		{"ordinary", "/v1/projects/550e8400-e29b-41d4-a716-446655440000/items/report.2024.final.pdf"},
		{"underscore_name", "/v1/users/John_Smith_profile_picture"},
	}
	hostile := hostilePaths(b)
	for _, name := range []string{"underscores_8k", "underscores_60k", "eyJ_20k", "near_keys_60k", "key_shapes_60k", "headers_60k"} {
		cases = append(cases, struct{ name, path string }{name, hostile[name]})
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.path)))
			for b.Loop() {
				if InPath(bc.path) {
					b.Fatal("found")
				}
			}
		})
	}
}
