// Package reqtarget owns the request boundary's first step: the raw
// request-target split into path and query, and the one canonical path the
// sidecar decides on and the upstream serves.
//
// It matters for security because a route, a budget and a credential check
// are only as good as the path they are asked about: if the sidecar and the
// upstream read a path differently, a request allowed for /public can be
// served as /admin. So a path is percent-decoded once, as nginx, Caddy, Go
// and servlet containers do before routing, and refused when servers
// disagree on what it names: dot segments (some resolve them, some do not),
// empty segments (some merge slashes), encoded '/', '\', '.' or NUL (some
// decode them before splitting segments), ';' (servlet path parameters),
// control characters, invalid UTF-8 (overlong encodings of '.' and '/'),
// and anything still percent-encoded after one decoding (servers that decode
// twice). What is left has one meaning everywhere, and in proxy mode it is
// what goes upstream, re-encoded minimally.
//
// It needs nothing from the sidecar and allocates nothing for a path with
// no '%': it runs on every request.
package reqtarget
