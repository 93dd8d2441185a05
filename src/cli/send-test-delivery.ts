import { randomBytes, randomUUID } from "node:crypto";
import { sign } from "@octokit/webhooks-methods";
import { type Deployment, type Settings, requireWebhookSecrets } from "../config/load.ts";
import { DeployqError, errorMessage } from "../errors.ts";
import { runCommand } from "../exec/run-command.ts";
import { pushPayload } from "../push-payload.ts";
import { branchMatches, isValidBranchName } from "../config/branch.ts";

export interface SendTestOptions {
  url?: string;
  deployment?: string;
  repository?: string;
  branch?: string;
  sha?: string;
  event: string;
}

const SHA = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/**
 * Signs a real push payload with GITHUB_WEBHOOK_SECRET and posts it, as GitHub would: by
 * default a push of a branch the deployment follows, naming the commit that branch has on
 * the remote, so that it deploys something real. Exit code 1 when the receiver answered
 * that nothing will deploy (voided) or failed.
 */
export async function sendTestDelivery(settings: Settings, options: SendTestOptions): Promise<number> {
  const [secret] = requireWebhookSecrets(settings);
  const first = [...settings.deployments.values()][0];
  const deployment = options.deployment ? settings.deployments.get(options.deployment) : first;
  if (options.deployment && !deployment) {
    throw new DeployqError("CONFIG", `no deployment "${options.deployment}" in ${settings.configPath}: use one of ${[...settings.deployments.keys()].join(", ") || "(none configured)"}`);
  }
  if (options.sha !== undefined && !SHA.test(options.sha)) throw new DeployqError("CONFIG", `--sha must be a full commit sha (40 or 64 hex digits), got ${JSON.stringify(options.sha)}`);
  if (options.branch !== undefined && !isValidBranchName(options.branch)) {
    throw new DeployqError("CONFIG", `--branch ${JSON.stringify(options.branch)} is not a valid branch name (git check-ref-format --branch)`);
  }
  const url = webhookUrl(settings, options.url);
  const repository = options.repository ?? deployment?.repository ?? "octo-org/example";
  let branch = options.branch ?? "main";
  let head: string | undefined;
  if (options.branch === undefined && deployment) ({ branch, sha: head } = await followedBranch(deployment));
  else if (deployment && options.sha === undefined) head = (await remoteHeads(deployment.remote, branch)).get(branch);
  const sha = options.sha ?? head ?? randomBytes(20).toString("hex");
  const body = JSON.stringify(options.event === "ping" ? { zen: "Keep it logically awesome.", hook_id: 1 } : pushPayload({ repository, branch, after: sha }));
  const delivery = randomUUID();
  let res: Response;
  try {
    res = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/deployq-test",
        "x-github-event": options.event,
        "x-github-delivery": delivery,
        "x-github-hook-id": "1",
        "x-hub-signature-256": await sign(secret!, body),
      },
      body,
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    throw unreachable(settings, url, err);
  }
  const text = await res.text();
  const what = options.event === "push" ? `push ${repository} refs/heads/${branch} ${sha}` : options.event;
  process.stdout.write(`POST ${url}\n  ${what} (delivery ${delivery})\n  → ${res.status} ${text}\n`);
  const answer = parseAnswer(text);
  if (answer.voided === true) {
    process.stdout.write(`  nothing will deploy: ${String(answer.reason)}\n`);
    return 1;
  }
  return res.ok ? 0 : 1;
}

function webhookUrl(settings: Settings, given: string | undefined): string {
  if (given !== undefined) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(given);
    } catch {
      parsed = undefined;
    }
    if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
      throw new DeployqError("CONFIG", `--url must be an http(s) URL such as http://127.0.0.1:${settings.port}/github-webhook, got ${JSON.stringify(given)}`);
    }
    return parsed.toString();
  }
  const host = settings.host === "0.0.0.0" ? "127.0.0.1" : settings.host === "::" ? "[::1]" : settings.host.includes(":") ? `[${settings.host}]` : settings.host;
  return `http://${host}:${settings.port}/github-webhook`;
}

/** "fetch failed" says nothing: name the address, and how to get a receiver there. */
function unreachable(settings: Settings, url: string, err: unknown): DeployqError {
  const cause = (err as { cause?: { code?: string } }).cause;
  const code = cause?.code ?? (err as { name?: string }).name;
  if (code === "ECONNREFUSED") {
    return new DeployqError(
      "UNAVAILABLE",
      `nothing is listening at ${url} (connection refused): start the daemon with \`npx deployq serve --config ${settings.configPath}\` ` +
        "(or `deployq receiver` beside `deployq workers`), or pass --url where it listens",
      { cause: err },
    );
  }
  const detail = code === "TimeoutError" ? "no answer within 30 s" : `${code ?? "error"}: ${errorMessage(cause ?? err)}`;
  return new DeployqError("UNAVAILABLE", `could not send the delivery to ${url} (${detail}): check that the daemon runs there, or pass --url`, { cause: err });
}

function parseAnswer(text: string): Record<string, unknown> {
  try {
    const json: unknown = JSON.parse(text);
    return typeof json === "object" && json !== null ? (json as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/**
 * A branch the deployment follows, and its head on the remote when it has one. For a glob,
 * the first remote branch that matches it; when none does, a name made to match (each `*`
 * or `**` a word, each `?` a letter), which the receiver routes all the same.
 */
async function followedBranch(deployment: Deployment): Promise<{ branch: string; sha: string | undefined }> {
  const pattern = deployment.branch;
  if (!/[*?]/.test(pattern)) return { branch: pattern, sha: (await remoteHeads(deployment.remote, pattern)).get(pattern) };
  for (const [branch, sha] of await remoteHeads(deployment.remote)) {
    if (branchMatches(pattern, branch)) return { branch, sha };
  }
  const made = pattern.replace(/\*\*|\*/g, "test").replace(/\?/g, "x");
  return { branch: isValidBranchName(made) && branchMatches(pattern, made) ? made : pattern, sha: undefined };
}

/** The remote's branches and their heads (all of them, or only `branch`); none when the remote cannot be read. */
async function remoteHeads(remote: string, branch?: string): Promise<Map<string, string>> {
  const heads = new Map<string, string>();
  try {
    const { stdout } = await runCommand(["git", "ls-remote", "--heads", "--end-of-options", remote, ...(branch ? [`refs/heads/${branch}`] : [])], {
      cwd: process.cwd(),
      env: { GIT_TERMINAL_PROMPT: "0" },
      timeoutMs: 15_000,
    });
    for (const line of stdout.split("\n")) {
      const m = /^([0-9a-f]{40}|[0-9a-f]{64})\trefs\/heads\/(.+)$/.exec(line);
      if (m) heads.set(m[2]!, m[1]!);
    }
  } catch {
    // An unreachable remote: the test delivery names a random commit instead.
  }
  return heads;
}
