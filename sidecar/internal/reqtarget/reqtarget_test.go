package reqtarget

import "testing"

func TestCanonicalPath(t *testing.T) {
	for raw, want := range map[string]string{
		"/":                    "/",
		"/api/admin/users":     "/api/admin/users",
		"/api/admin/":          "/api/admin/",
		"/api/%61dmin/users":   "/api/admin/users", // decoded once, as nginx and the upstream do
		"/a%20b":               "/a b",
		"/100%25":              "/100%",
		"/100%25x":             "/100%x",
		"/caf%C3%A9":           "/café",
		"/a.b/c..d/.e/f.":      "/a.b/c..d/.e/f.", // dots inside segments are names
		"/a:b@c!$&'()*+,=~_-x": "/a:b@c!$&'()*+,=~_-x",
		"/tag/%23x":            "/tag/#x", // an encoded '#' is a name
	} {
		got, ok := CanonicalPath(raw)
		if !ok || got != want {
			t.Errorf("CanonicalPath(%q) = %q, %v; want %q", raw, got, ok, want)
		}
	}
	// Each is read differently by some server: refused.
	for _, raw := range []string{
		"", "api", "*",
		"/public/../api/admin/x", "/public/%2e%2e/api/admin/x", "/public/%2E%2E/api/admin/x", "/public/.%2e/api",
		"/api/./admin", "/api/%2e/admin", "/..", "/.", "/api/..", "/api/.",
		"/api//admin", "//api/admin", "/api/admin//",
		"/api%2fadmin", "/api%2Fadmin", "/api%5cadmin", "/api\\admin", "/api/admin%00", "/api/admin\x00",
		"/api;a/admin", "/api/admin;jsessionid=1", "/api%3badmin",
		"/api/%252e%252e/admin", "/api/%2561dmin", // still encoded after one decoding
		"/api/%", "/api/%2", "/api/%zz", "/api/%g0",
		"/api/%c0%ae%c0%ae/admin", "/api/%ff", // invalid UTF-8, overlong dots
		"/api/\tadmin", "/api/%0d%0aX-Injected:%201", "/api/%7f",
		"/v1/items#/admin", "/#", // a raw '#': some parsers end the path there
	} {
		if got, ok := CanonicalPath(raw); ok {
			t.Errorf("CanonicalPath(%q) = %q, want refused", raw, got)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct{ target, path, query string }{
		{"/a/b?x=1", "/a/b", "x=1"},
		{"/a?x=1?y", "/a", "x=1?y"},
		{"http://svc.example/a/b?x=1", "/a/b", "x=1"},
		{"https://svc.example", "/", ""},
		{"http://svc.example?x=1", "/", "x=1"},
	} {
		p, q, ok := Split(tc.target)
		if !ok || p != tc.path || q != tc.query {
			t.Errorf("Split(%q) = %q %q %v", tc.target, p, q, ok)
		}
	}
	for _, target := range []string{"*", "svc.example:443", ""} {
		if _, _, ok := Split(target); ok {
			t.Errorf("Split(%q) accepted", target)
		}
	}
}
