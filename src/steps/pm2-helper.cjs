#!/usr/bin/env node
// Run by src/steps/pm2.ts in a child process (through runCommand), never inside the daemon:
//
//   node pm2-helper.cjs load <ecosystem file> <output.json>
//     Loads an ecosystem file the way pm2 does (it is code from the deployed repository) and
//     writes the config it exports, as JSON, to <output.json> (not to stdout: its env values
//     are not for the deploy log).
//
//   node pm2-helper.cjs list
//     Prints the processes of the pm2 daemon at PM2_HOME (starting the daemon if none runs,
//     as `pm2 jlist` does), as a JSON array of only the fields deployq needs: `pm2 jlist`
//     would print every app's whole environment, and can exceed what runCommand keeps of
//     stdout on a busy host. This stdout is for deployq only (pm2.ts runs it with
//     logStdout: false); errors go to stderr, which the deploy log keeps.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { pathToFileURL } = require("node:url");

const MARKER = "@@deployq-pm2-list@@";

async function load(file, output) {
  let config;
  if (/\.(?:c?js|mjs)$/.test(file)) {
    // CommonJS (module.exports = ...) arrives as `default`; an ES module may export default or named.
    const ns = await import(pathToFileURL(file).href);
    config = ns.default !== undefined ? ns.default : { ...ns };
  } else {
    // JSON (pm2 accepts JSON5-ish object literals) and YAML: pm2's own parser.
    const Common = require("pm2/lib/Common.js");
    config = Common.parseConfig(fs.readFileSync(file), file);
  }
  fs.writeFileSync(output, JSON.stringify(config === undefined ? null : config), { mode: 0o600 });
}

function list() {
  const pm2 = require("pm2");
  pm2.connect((err) => {
    if (err) {
      console.error(`cannot connect to the pm2 daemon: ${err.message || err}`);
      process.exit(1);
    }
    pm2.list((err2, procs) => {
      if (err2) {
        console.error(`pm2 list failed: ${err2.message || err2}`);
        process.exit(1);
      }
      const out = procs.map((p) => {
        const e = p.pm2_env || {};
        // The tag as the process sees it: pm2 spawns with pm2_env's top-level values (God/ForkMode.js:95-99),
        // while pm2_env.env is replaced by the config's env on a reload (Utility.extendExtraConfig).
        const env = e.env || {};
        const tag = typeof e.DEPLOYQ_DEPLOYMENT === "string" ? e.DEPLOYQ_DEPLOYMENT : env.DEPLOYQ_DEPLOYMENT;
        return {
          name: p.name,
          pm_id: p.pm_id,
          pid: p.pid,
          status: e.status,
          exec_mode: e.exec_mode,
          pm_exec_path: e.pm_exec_path,
          pm_cwd: e.pm_cwd,
          restart_time: e.restart_time,
          deployment: typeof tag === "string" ? tag : null,
          module: Boolean(e.pmx_module),
        };
      });
      // After a marker: pm2 may print notices (spawning its daemon) before.
      process.stdout.write(`\n${MARKER}${JSON.stringify(out)}\n`);
      pm2.disconnect(() => process.exit(0));
    });
  });
}

const [command, ...args] = process.argv.slice(2);
if (command === "load" && args.length === 2) {
  load(path.resolve(args[0]), args[1]).then(
    // An ecosystem file that starts timers or servers must not keep this process alive.
    () => process.exit(0),
    (err) => {
      // What went wrong and where in the file, not node's loader frames: this ends up in an error message.
      const lines = String((err && err.stack) || err).split("\n");
      const frames = lines.findIndex((l) => /^\s+at /.test(l));
      const where = lines.find((l) => /^\s+at /.test(l) && l.includes(args[0]));
      console.error([...(frames < 0 ? lines : lines.slice(0, frames)), ...(where ? [where] : [])].join("\n"));
      process.exit(1);
    },
  );
} else if (command === "list" && args.length === 0) {
  list();
} else {
  console.error("usage: pm2-helper.cjs load <ecosystem file> <output.json> | list");
  process.exit(2);
}
