// Runs every graphql-http server audit (GraphQL over HTTP spec) against one endpoint and prints
// the results as one JSON list on stdout. The Python test decides what passes.
// Usage: node audit.mjs <http-url-of-/graphql>
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <url>');
  process.exit(2);
}

const results = [];
// One at a time: a failure then points at one request in the server log, not at a burst.
for (const { id, name, fn } of serverAudits({ url })) {
  try {
    const result = await fn();
    results.push({
      id,
      name,
      status: result.status,
      reason: result.reason ?? null,
      httpStatus: result.response?.status ?? null,
    });
  } catch (err) {
    // graphql-http rethrows what is not an assertion (network errors, unreadable bodies):
    // still a failure of this audit, and the others should run.
    const cause = err?.cause ? ` (${err.cause})` : ''; // fetch hides the socket error there
    results.push({ id, name, status: 'error', reason: `threw ${err}${cause}`, httpStatus: null });
  }
}
process.stdout.write(JSON.stringify(results) + '\n');
