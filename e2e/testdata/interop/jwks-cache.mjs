// A verifier that caches the JWKS as jose's createRemoteJWKSet does, kept
// running across signing-key rotations:
//   node jwks-cache.mjs <jwks-url> <issuer> <audience> <cacheMaxAge ms> <cooldownDuration ms>
// prints {"ready":true}, then reads one token a line from stdin and prints
// one line each: {"ok":true,"kid":...} or {"ok":false,"kid":...,"error":...}.
import * as jose from 'jose';
import { createInterface } from 'node:readline';

const [jwksURL, issuer, audience, cacheMaxAge, cooldownDuration] = process.argv.slice(2);
const jwks = jose.createRemoteJWKSet(new URL(jwksURL), {
  cacheMaxAge: Number(cacheMaxAge),
  cooldownDuration: Number(cooldownDuration),
});
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');

out({ ready: true });
for await (const token of createInterface({ input: process.stdin })) {
  const { kid } = jose.decodeProtectedHeader(token);
  try {
    await jose.jwtVerify(token, jwks, { issuer, audience });
    out({ ok: true, kid });
  } catch (err) {
    out({ ok: false, kid, error: `${err.code || err.name}: ${err.message}` });
  }
}
