// Package apikey defines keybroker's API key format, shared by the Vault plugin
// (which mints keys) and the sidecar (which rejects garbage before asking Vault).
//
// A key reads <prefix>_<key_id>_<secret><checksum>, modelled on GitHub's token
// format:
//
//		kb_4Fq7TzL0aBcD_Xy...(43 base62 chars of secret)...Q1w2E3
//
//	  - prefix: 2 to 16 lowercase letters and digits, starting with a letter, so
//	    secret scanners can tell keybroker keys (and which deployment) at a glance;
//	  - key_id: 12 base62 characters, the public handle used for O(1) lookup:
//	    5 for the second it was minted (Unix seconds modulo 62^5, a 29-year
//	    cycle), then 7 drawn with crypto/rand. The stamp lets a verifier that
//	    holds every key's record tell a key minted moments ago, whose record
//	    may still be on its way, from an id that no key has (MintedNear);
//	  - secret: 43 base62 characters drawn uniformly with crypto/rand (256 bits);
//	  - checksum: CRC32 (IEEE) of everything before it, as 6 base62 characters,
//	    so typos and garbage are rejected offline before any storage lookup.
//
// Parse allocates nothing: it is on every sidecar request.
package apikey
