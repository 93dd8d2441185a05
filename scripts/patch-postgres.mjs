#!/usr/bin/env node
// Patches postgres.js 3.4.9 (run by npm after install: package.json "postinstall").
//
// Upstream, a connection whose socket closes with a query in flight can take the process
// down or wedge the pool, and a Postgres restart under load does exactly that:
//   - porsager/postgres#1154, #1208 (fixes proposed in #1168, #1209, not released): a write
//     deferred with setImmediate runs after closed() has nulled the socket, and throws
//     "TypeError: Cannot read properties of null (reading 'write')" from a timer, where no
//     caller can catch it;
//   - closed() after a socket error (ECONNRESET: a terminated backend) leaves the in-flight
//     query and the pipelined ones (a transaction's ROLLBACK) in the connection, and
//     clears the write timer without forgetting it: the next queries on the reconnected
//     connection never settle, and the pool hangs for good;
//   - #1199: releasing a reserved connection whose socket closed puts the dead connection
//     back in the pool.
// The patch settles every query of a closed connection with CONNECTION_CLOSED, refuses
// queries sent to a connection without a socket, and keeps dead connections out of the
// pool. test/integration/postgres-outage.test.ts reproduces each case against a real Postgres.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const MARKER = "/* deployq: patched (scripts/patch-postgres.mjs) */";
const VERSION = "3.4.9";

const replacements = {
  "connection.js": [
    [
      "  function execute(q) {\n    if (terminated)\n      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n",
      "  function execute(q) {\n    if (terminated)\n      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n\n" +
        "    if (!socket)\n      return queryError(q, Errors.connection('CONNECTION_CLOSED', options)), true\n",
    ],
    [
      "  function nextWrite(fn) {\n    const x = socket.write(chunk, fn)\n",
      "  function nextWrite(fn) {\n    if (!socket) {\n      nextWriteTimer !== null && clearImmediate(nextWriteTimer)\n" +
        "      chunk = nextWriteTimer = null\n      return false\n    }\n    const x = socket.write(chunk, fn)\n",
    ],
    ["    clearImmediate(nextWriteTimer)\n    if (socket) {\n", "    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    if (socket) {\n"],
    [
      "    clearImmediate(nextWriteTimer)\n    socket.removeListener('data', data)\n",
      "    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    socket.removeListener('data', data)\n",
    ],
    [
      "    !hadError && (query || sent.length) && error(Errors.connection('CONNECTION_CLOSED', options, socket))\n",
      "    ;(query || sent.length) && error(Errors.connection('CONNECTION_CLOSED', options, socket))\n" +
        "    query = results = errorResponse = null\n    result = new Result()\n",
    ],
  ],
  "index.js": [
    [
      "    sql.release = () => {\n      c.reserved = null\n      onopen(c)\n    }\n",
      "    sql.release = () => {\n      c.reserved = null\n      ;(c.queue === reserved || c.queue === full) && onopen(c)\n    }\n",
    ],
  ],
};

const require = createRequire(import.meta.url);
let root;
try {
  // The package's "require" entry is cjs/src/index.js.
  root = path.resolve(path.dirname(require.resolve("postgres")), "..", "..");
} catch {
  console.log("patch-postgres: postgres is not installed here; nothing to patch");
  process.exit(0);
}
const version = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")).version;
if (version !== VERSION) {
  console.error(
    `patch-postgres: postgres ${version} is installed, but this patch is for ${VERSION}: ` +
      `pin "postgres": "${VERSION}" in package.json, or check whether ${version} fixes porsager/postgres#1208 and update the patch`,
  );
  process.exit(1);
}
let changed = 0;
for (const flavour of ["src", "cjs/src"]) {
  for (const [file, edits] of Object.entries(replacements)) {
    const target = path.join(root, flavour, file);
    let text = readFileSync(target, "utf8");
    if (text.includes(MARKER)) continue;
    for (const [from, to] of edits) {
      const at = text.indexOf(from);
      if (at < 0 || text.indexOf(from, at + 1) >= 0) {
        console.error(`patch-postgres: ${target} does not hold the code this patch expects (once): ${JSON.stringify(from.slice(0, 60))}…`);
        process.exit(1);
      }
      text = text.slice(0, at) + to + text.slice(at + from.length);
    }
    writeFileSync(target, `${text}\n${MARKER}\n`);
    changed++;
  }
}
console.log(changed > 0 ? `patch-postgres: patched postgres ${version} (${changed} files)` : `patch-postgres: postgres ${version} already patched`);
