// Package contentcoding decodes a response body's Content-Encoding, so that
// usage is read from what the upstream sent, whatever the encoding.
//
// It matters for security because a metered route is billed from the body:
// an upstream (or whoever controls it) that compresses anyway must not make
// its usage unreadable, and a hostile stream must not make the sidecar hold
// more than a bounded window in memory (zstd's is capped). The sidecar asks
// a metered upstream for identity encoding; when it compresses anyway, the
// body is decoded as it streams through, for the meter and for the client
// alike (which may always receive identity). A coding it cannot decode is
// ErrUnsupported: the body is then passed on as it came, and the request
// settled by the route's fallback.
//
// The standard library has gzip, zlib and flate; brotli and zstd come from
// andybalholm/brotli and klauspost/compress, the implementations Go's
// ecosystem (Caddy among them) relies on.
package contentcoding
