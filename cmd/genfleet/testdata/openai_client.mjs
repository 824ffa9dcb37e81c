// OpenAI's own client against genfleet's OpenAI images API, for
// TestOpenAINodeClient: it prints one JSON object of what it saw.
import fs from 'node:fs';
import OpenAI, { toFile } from 'openai';

const client = new OpenAI({ apiKey: process.env.GENFLEET_KEY, baseURL: process.env.GENFLEET_BASE_URL });
const out = {};

const gen = await client.images.generate({
  model: 'demo', prompt: 'a red fox', n: 2, size: '64x64', response_format: 'b64_json',
  // genfleet's own parameters ride along.
  seed: 7, steps: 2,
});
out.gen = { n: gen.data.length, b64: gen.data.map((d) => d.b64_json), job_id: gen.job_id };

const edit = await client.images.edit({
  model: 'demo', prompt: 'a blue fox', n: 1,
  image: await toFile(fs.readFileSync(process.env.GENFLEET_IMAGE), 'in.png', { type: 'image/png' }),
  mask: await toFile(fs.readFileSync(process.env.GENFLEET_MASK), 'mask.png', { type: 'image/png' }),
  steps: 2,
});
out.edit = { n: edit.data.length, job_id: edit.job_id };

// The client's default retries stay on: a 504 says not to retry.
try {
  await client.images.generate({ model: 'demo', prompt: 'a slow fox', size: '64x64', steps: 2 },
    { headers: { 'X-Genfleet-Wait': '1ms' } });
  out.timeout = { status: 0 };
} catch (e) {
  out.timeout = { status: e.status, error: e.error };
}

try {
  await client.images.generate({ model: 'no-such-model', prompt: 'x' });
  out.notfound = { status: 0 };
} catch (e) {
  out.notfound = { status: e.status, error: e.error };
}

console.log(JSON.stringify(out));
