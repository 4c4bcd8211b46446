// The npm graphql-ws client (graphql-transport-ws) subscribing to `myEvents`; prints one JSON
// object per line: {"type":"connected"} once acknowledged, then "next", "error", "closed",
// "complete" or "timeout" as they happen. Exits 0 after the wanted number of events, 1 on an
// error or an early end, 2 on timeout.
// Usage: node subscribe.mjs <ws-url> <access-token> <events> <timeout-ms>
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const QUERY = 'subscription { myEvents { __typename ... on ProfileChanged { me { displayName } } } }';

const [url, token, wanted, timeoutMs] = process.argv.slice(2);
if (!url || token === undefined || !wanted || !timeoutMs) {
  console.error('usage: node subscribe.mjs <ws-url> <access-token> <events> <timeout-ms>');
  process.exit(2);
}

// Pipes are written synchronously on POSIX, so nothing printed is lost at process.exit.
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

// A close event, an Error, or the GraphQL errors of an "error" message: keep what tells them apart.
const describe = (err) => {
  if (err && typeof err.code === 'number') return { code: err.code, reason: err.reason ?? '' };
  if (err instanceof Error) return { message: err.message };
  return err;
};

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
  retryAttempts: 0, // the test wants the first failure, not a reconnect that hides it
  on: {
    // After connection_ack; the subscribe message goes out right behind it.
    connected: () => print({ type: 'connected' }),
    closed: (event) => print({ type: 'closed', code: event?.code ?? null, reason: event?.reason ?? '' }),
  },
});

let received = 0;
let finished = false;
const finish = (code) => {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  client.dispose();
  process.exit(code);
};
const timer = setTimeout(() => {
  print({ type: 'timeout', received });
  finish(2);
}, Number(timeoutMs));

client.subscribe(
  { query: QUERY },
  {
    next: (result) => {
      print({ type: 'next', payload: result });
      received += 1;
      if (received >= Number(wanted)) finish(0);
    },
    error: (err) => {
      print({ type: 'error', error: describe(err) });
      finish(1);
    },
    complete: () => {
      print({ type: 'complete' });
      finish(received >= Number(wanted) ? 0 : 1);
    },
  },
);
