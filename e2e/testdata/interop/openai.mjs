// The official openai SDK as an app calls a metered route through the
// sidecar. One JSON object out.
//   run <baseURL> <apiKey>   a chat completion, a streamed one with usage,
//                            then completions until one fails:
//                            {chat, streamed, calls, error: {status, code, type}, ms}
import OpenAI from 'openai';

const [mode, baseURL, apiKey] = process.argv.slice(2);
if (mode !== 'run') {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey, maxRetries: 2, timeout: 60_000 });
const ask = () => client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
const chat = await ask();
let streamedUsage = null;
const stream = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.usage) streamedUsage = chunk.usage.total_tokens;
}
let calls = 0;
const start = Date.now();
let error = null;
try {
  for (; calls < 1000; calls++) await ask();
} catch (e) {
  error = { status: e.status ?? null, code: e.code ?? null, type: e.type ?? null };
}
process.stdout.write(JSON.stringify({ chat: chat.usage.total_tokens, streamed: streamedUsage, calls, error, ms: Date.now() - start }) + '\n');
