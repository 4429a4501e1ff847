// What the e2e tests ask of clients nobody at keybroker wrote. One JSON
// object out per run:
//   keygen <alg>                      dpop's generateKeyPair: {publicJwk, privateJwk, jkt}
//   proof <privateJwk> <publicJwk> <alg> <htm> <htu> [token]
//                                     dpop's generateProof: {proof}
//   verify <discovery-url> <token> <aud>
//                                     jose's jwtVerify through the discovery document: {payload, header}
import * as DPoP from 'dpop';
import * as jose from 'jose';

const webcryptoAlg = {
  ES256: { name: 'ECDSA', namedCurve: 'P-256' },
  Ed25519: { name: 'Ed25519' },
  PS256: { name: 'RSA-PSS', hash: 'SHA-256' },
  RS256: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
};

const [mode, ...args] = process.argv.slice(2);
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');

if (mode === 'keygen') {
  const kp = await DPoP.generateKeyPair(args[0], { extractable: true });
  out({
    publicJwk: await crypto.subtle.exportKey('jwk', kp.publicKey),
    privateJwk: await crypto.subtle.exportKey('jwk', kp.privateKey),
    jkt: await DPoP.calculateThumbprint(kp.publicKey),
  });
} else if (mode === 'proof') {
  const [priv, pub, alg, htm, htu, token] = args;
  const a = webcryptoAlg[alg];
  const usages = (u) => [u];
  const keypair = {
    privateKey: await crypto.subtle.importKey('jwk', JSON.parse(priv), a, false, usages('sign')),
    publicKey: await crypto.subtle.importKey('jwk', JSON.parse(pub), a, true, usages('verify')),
  };
  out({ proof: await DPoP.generateProof(keypair, htu, htm, undefined, token || undefined) });
} else if (mode === 'verify') {
  const [discoveryURL, token, aud] = args;
  const discovery = await (await fetch(discoveryURL)).json();
  const jwks = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
    issuer: discovery.issuer, audience: aud, typ: 'at+jwt',
  });
  out({ payload, header: protectedHeader });
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
