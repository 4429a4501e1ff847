// Package credscan finds a credential where none belongs: in a request's
// path or query, and in a path about to be logged.
//
// It matters for security because a credential in a URL leaks: into access
// logs, proxies' caches, Referer headers and browser history. The sidecar
// refuses a request whose path or query carries one (credential_in_path,
// credential_in_query, and a method override, method_override, which would
// change what the upstream does from what was decided), and its decision
// log writes such a path segment as "[credential]" (Redact).
//
// A credential is found wherever it sits among other characters (/files/kb_....json,
// /t/token=eyJ..., ?q=Bearer+eyJ..., a callback URL in a value):
//
//   - an API key or kbrt_ refresh token: base62 words joined by '_' in a
//     key's shape (a prefix, a 12-character key_id, 49 characters of
//     secret and checksum) whose checksum holds, for some prefix length;
//   - a compact JWS: a base64url word that starts with "eyJ" where a word
//     starts (after anything that is not base64url, or after the word's
//     first '-' or '_' followed by "eyJ"), is 16 characters or more,
//     decodes to a JSON object with "alg", and is followed by '.', a
//     payload of two or more characters and another '.'.
//
// Ordinary paths hold neither: camelCase words with "eyJ" inside
// (surveyJSLibrary) start no word with it, and a word that does (eyJohn)
// decodes to no header; underscores and long slugs have no checksum. The
// scan reads its input once (a word at most twice), runs a checksum only
// where a key's shape is complete (at most once per 63 bytes) and decodes
// at most two headers per word, so its cost is linear in the input, and it
// allocates nothing: it runs on every request, before the credential check.

package credscan
