import { constants as fsConstants } from "node:fs";
import { access, stat } from "node:fs/promises";
import type { NginxHost } from "../../config/schema.ts";
import { errorMessage } from "../../errors.ts";
import { type CheckResult, checkCommand } from "../check-command.ts";
import { readMaster } from "./reload.ts";

type Check = CheckResult;

const SUDOERS_FIX = "install sudoers/deployq (visudo -cf sudoers/deployq && install -m 0440 sudoers/deployq /etc/sudoers.d/deployq)";
const fixFor = (key: string) => ({ missing: `install it or change [nginx] ${key}`, sudo: `${SUDOERS_FIX} or change [nginx] ${key}` });

/** For `deployq check`, changing nothing. */
export async function checkNginx(host: NginxHost, confDirs: string[]): Promise<Array<{ name: string; ok: boolean; detail: string }>> {
  const checks: Check[] = [];
  checks.push(await checkCommand("nginx test_command", host.test_command, fixFor("test_command")));
  checks.push(await checkCommand("nginx reload_command", host.reload_command, fixFor("reload_command")));
  for (const dir of [...new Set(confDirs)].sort()) {
    const name = `nginx conf_dir ${dir}`;
    try {
      const st = await stat(dir);
      if (!st.isDirectory()) {
        checks.push({ name, ok: false, detail: `${dir} is not a folder` });
        continue;
      }
      await access(dir, fsConstants.W_OK | fsConstants.X_OK);
      checks.push({ name, ok: true, detail: `writable; nginx must include it (include ${dir}/*.conf;)` });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      checks.push({
        name,
        ok: false,
        detail:
          code === "ENOENT"
            ? `${dir} does not exist: create it, owned by deployq's user, and include it from nginx's http block (include ${dir}/*.conf;)`
            : `${dir} is not writable by deployq's user (${errorMessage(err)}): chown it to that user`,
      });
    }
  }
  try {
    const master = await readMaster(host.pid_file);
    checks.push({ name: "nginx pid_file", ok: true, detail: `${host.pid_file}: nginx master pid ${master}` });
  } catch (err) {
    checks.push({ name: "nginx pid_file", ok: false, detail: errorMessage(err) });
  }
  return checks;
}
