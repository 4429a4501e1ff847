// A real MCP server and client, from the official TypeScript SDK, for the
// e2e tests. One JSON object out per run (the server: one, then it serves).
//   server                            an MCP server on 127.0.0.1, stateless
//                                     Streamable HTTP; tool whoami echoes
//                                     the identity headers it got: {port}
//   call <url> <token> <privateJwk> <publicJwk> <alg> <origin>
//                                     connects through url and calls
//                                     whoami, each request with the token
//                                     and a fresh DPoP proof: {result}
//   headers <url> <token>             connects with a static Bearer token in
//                                     requestInit headers (no OAuth) and calls
//                                     whoami: {result} or {error}
//   provider <url> <token>            the same token from an OAuthClientProvider
//                                     that cannot log in (no redirect): {result}
//                                     or {error}: what a 401/403 ends in
//   unauthorized <url>                what a client without a token learns:
//                                     the 401's WWW-Authenticate, then the
//                                     metadata it points to: {status, params, metadata}
import http from 'node:http';
import * as DPoP from 'dpop';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { extractWWWAuthenticateParams, discoverOAuthProtectedResourceMetadata } from '@modelcontextprotocol/sdk/client/auth.js';

const [mode, ...args] = process.argv.slice(2);
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');

const webcryptoAlg = {
  ES256: { name: 'ECDSA', namedCurve: 'P-256' },
  Ed25519: { name: 'Ed25519' },
};

if (mode === 'server') {
  const server = http.createServer(async (req, res) => {
    const mcp = new McpServer({ name: 'keybroker-e2e', version: '1.0.0' });
    mcp.tool('whoami', async (extra) => {
      const h = extra.requestInfo?.headers ?? {};
      return { content: [{ type: 'text', text: JSON.stringify({
        subject: h['x-keybroker-subject'] ?? null,
        scopes: h['x-keybroker-scopes'] ?? null,
        authorization: h['authorization'] ?? null,
        dpop: h['dpop'] ?? null,
      }) }] };
    });
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on('close', () => { transport.close(); mcp.close(); });
    await mcp.connect(transport);
    let body = '';
    for await (const chunk of req) body += chunk;
    await transport.handleRequest(req, res, body ? JSON.parse(body) : undefined);
  });
  server.listen(0, '127.0.0.1', () => out({ port: server.address().port }));
} else if (mode === 'call') {
  const [url, token, priv, pub, alg, origin] = args;
  const a = webcryptoAlg[alg];
  const keypair = {
    privateKey: await crypto.subtle.importKey('jwk', JSON.parse(priv), a, false, ['sign']),
    publicKey: await crypto.subtle.importKey('jwk', JSON.parse(pub), a, true, ['verify']),
  };
  const statuses = [];
  const dpopFetch = async (input, init = {}) => {
    const u = new URL(input);
    const method = init.method ?? 'GET';
    const headers = new Headers(init.headers);
    headers.set('Authorization', 'DPoP ' + token);
    headers.set('DPoP', await DPoP.generateProof(keypair, origin + u.pathname, method, undefined, token));
    const res = await fetch(input, { ...init, headers });
    statuses.push(`${method} ${res.status}`);
    return res;
  };
  const client = new Client({ name: 'keybroker-e2e-client', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch: dpopFetch }));
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  await client.close();
  out({ result: JSON.parse(result.content[0].text), statuses });
} else if (mode === 'headers' || mode === 'provider') {
  const [url, token] = args;
  const opts = mode === 'headers'
    ? { requestInit: { headers: { Authorization: 'Bearer ' + token } } }
    : { authProvider: {
        get redirectUrl() { return undefined; },
        get clientMetadata() { return { client_name: 'keybroker-e2e', redirect_uris: [] }; },
        clientInformation: () => ({ client_id: 'keybroker-e2e' }),
        tokens: () => ({ access_token: token, token_type: 'Bearer' }),
        saveTokens: () => {},
        redirectToAuthorization: () => { throw new Error('no interactive login here'); },
        saveCodeVerifier: () => {},
        codeVerifier: () => '',
      } };
  const client = new Client({ name: 'keybroker-e2e-client', version: '1.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url), opts));
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    await client.close();
    out({ result: JSON.parse(result.content[0].text) });
  } catch (e) {
    out({ error: { name: e?.constructor?.name ?? 'Error', code: e?.code ?? null, message: String(e?.message ?? e) } });
  }
} else if (mode === 'unauthorized') {
  const [url] = args;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'e2e', version: '1' } } }),
  });
  const params = extractWWWAuthenticateParams(res);
  const metadata = await discoverOAuthProtectedResourceMetadata(url, { resourceMetadataUrl: params.resourceMetadataUrl });
  out({ status: res.status, params: { resourceMetadataUrl: params.resourceMetadataUrl?.toString() ?? null, scope: params.scope ?? null }, metadata });
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
