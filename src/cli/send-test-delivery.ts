import { randomBytes, randomUUID } from "node:crypto";
import { sign } from "@octokit/webhooks-methods";
import { type Settings, requireWebhookSecrets } from "../config/load.ts";
import { DeployqError } from "../errors.ts";
import { runCommand } from "../exec/run-command.ts";
import { pushPayload } from "../push-payload.ts";

export interface SendTestOptions {
  url?: string;
  deployment?: string;
  repository?: string;
  branch?: string;
  sha?: string;
  event: string;
}

/** Signs a real push payload with GITHUB_WEBHOOK_SECRET and posts it, as GitHub would. */
export async function sendTestDelivery(settings: Settings, options: SendTestOptions): Promise<number> {
  const [secret] = requireWebhookSecrets(settings);
  const first = [...settings.deployments.values()][0];
  const deployment = options.deployment ? settings.deployments.get(options.deployment) : first;
  if (options.deployment && !deployment) {
    throw new DeployqError("CONFIG", `no deployment "${options.deployment}" in ${settings.configPath}`);
  }
  const repository = options.repository ?? deployment?.repository ?? "octo-org/example";
  const branch = options.branch ?? (deployment && !/[*?]/.test(deployment.branch) ? deployment.branch : "main");
  const sha = options.sha ?? (deployment ? await branchHead(deployment.remote, branch) : undefined) ?? randomBytes(20).toString("hex");
  const body = JSON.stringify(options.event === "ping" ? { zen: "Keep it logically awesome.", hook_id: 1 } : pushPayload({ repository, branch, after: sha }));
  const host = settings.host === "0.0.0.0" ? "127.0.0.1" : settings.host.includes(":") ? `[${settings.host}]` : settings.host;
  const url = options.url ?? `http://${host}:${settings.port}/github-webhook`;
  const delivery = randomUUID();
  const res = await fetch(url, {
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
  });
  const text = await res.text();
  const what = options.event === "push" ? `push ${repository} refs/heads/${branch} ${sha}` : options.event;
  process.stdout.write(`POST ${url}\n  ${what} (delivery ${delivery})\n  → ${res.status} ${text}\n`);
  return res.ok ? 0 : 1;
}

/** The commit the branch has on the remote, so that the test delivery deploys something real. */
async function branchHead(remote: string, branch: string): Promise<string | undefined> {
  try {
    const { stdout } = await runCommand(["git", "ls-remote", "--end-of-options", remote, `refs/heads/${branch}`], {
      cwd: process.cwd(),
      env: { GIT_TERMINAL_PROMPT: "0" },
      timeoutMs: 15_000,
    });
    return /^([0-9a-f]{40,64})\s/.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}
