// Drives a tci server with the official Together TypeScript SDK (`together-ai`):
// execute in a new session, run again in the same session, list sessions.
// Prints one JSON document on stdout. Run by tests/e2e/test_typescript_sdk.py.
import Together from 'together-ai';

const baseURL = process.env.TOGETHER_BASE_URL;
const apiKey = process.env.TOGETHER_API_KEY;
if (!baseURL || !apiKey) {
  // Never fall back to the SDK's default (the hosted API): this script only talks to tci.
  console.error('TOGETHER_BASE_URL and TOGETHER_API_KEY must be set');
  process.exit(2);
}

const client = new Together({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });

const first = await client.codeInterpreter.execute({
  code: 'print("Hello from TCI!")\nx = 41',
  language: 'python',
});
const sessionId = first.data.session_id;
const second = await client.codeInterpreter.execute({
  code: 'print(x + 1)',
  language: 'python',
  session_id: sessionId,
});
const listed = await client.codeInterpreter.sessions.list();

let unknownSession = null;
try {
  await client.codeInterpreter.execute({
    code: 'print(1)',
    language: 'python',
    session_id: 'no-such-session',
  });
} catch (error) {
  unknownSession = { name: error.constructor.name, status: error.status, error: error.error };
}

console.log(JSON.stringify({ first, second, listed, unknownSession }));
