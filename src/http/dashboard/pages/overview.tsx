// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import type { DeliveryRow, OverviewData, OverviewDeployment } from "../data.ts";
import type { LockState } from "../locks.ts";
import { Ago, Badge, Layout, type PageContext, Sha, formatAge, formatDuration, seg } from "./common.tsx";
import { FleetSummary } from "./fleet.tsx";

function DeploymentRow(props: { d: OverviewDeployment; ctx: PageContext }) {
  const { d, ctx } = props;
  const last = d.lastRun;
  return (
    <tr>
      <td>
        <a href={`${ctx.prefix}/deployments/${seg(d.deployment)}`}>{d.deployment}</a>
        {!d.enabled && <span class="badge muted">disabled</span>}
        <div class="muted small">
          {d.repository} · {d.branch}
        </div>
        {d.fleet && <FleetSummary fleet={d.fleet} deployment={d.deployment} ctx={ctx} />}
      </td>
      <td>
        {d.current.sha ? (
          <>
            <Sha sha={d.current.sha} /> <span>{d.current.ref ?? ""}</span>
            <div class="muted small">{d.releasedAt ? <Ago at={d.releasedAt} now={ctx.now} /> : d.current.release ?? ""}</div>
          </>
        ) : (
          <span class="muted">nothing deployed</span>
        )}
      </td>
      <td>
        {last ? (
          <>
            <a href={`${ctx.prefix}/deploys/${seg(last.id)}`}>
              <Badge status={last.status} />
            </a>{" "}
            {formatDuration(last.durationMs)}
            <div class="muted small">
              <Ago at={last.finishedAt ?? last.startedAt} now={ctx.now} />
            </div>
          </>
        ) : (
          <span class="muted">never</span>
        )}
      </td>
      <td>
        {d.running ? (
          <>
            <a href={`${ctx.prefix}/deploys/${seg(d.running.id)}`}>
              <Badge status="running" />
            </a>{" "}
            <span class="step">{d.running.step ?? "starting"}</span>
            <div class="muted small">
              since <Ago at={d.running.startedAt} now={ctx.now} />
            </div>
          </>
        ) : (
          <span class="muted">idle</span>
        )}
        {d.paused ? (
          <div class="bad small">
            {"invalid" in d.paused ? `paused: ${d.paused.invalid}` : `paused by ${d.paused.by}${d.paused.reason ? `: ${d.paused.reason}` : ""}${d.paused.until ? ` (until ${d.paused.until})` : ""}`}
          </div>
        ) : null}
        {d.waitingForChecks ? (
          <div class="small" data-waiting-for-checks={d.waitingForChecks.sha}>
            waiting for checks {d.waitingForChecks.pending.join(", ")} on <code>{d.waitingForChecks.sha.slice(0, 7)}</code>, since <Ago at={d.waitingForChecks.since} now={ctx.now} />
          </div>
        ) : null}
      </td>
      <td>
        <LockCell lock={d.lock} now={ctx.now} />
      </td>
      <td class="num">{d.queued}</td>
      <td class="num">{d.deadLetters > 0 ? <a class="bad" href={`${ctx.prefix}/queues#dead-letter-${d.deployment}`}>{d.deadLetters}</a> : 0}</td>
    </tr>
  );
}

function LockCell(props: { lock: LockState | undefined; now: number }) {
  const { lock, now } = props;
  if (!lock) return <span class="muted">-</span>;
  if (lock.state === "unknown")
    return (
      <>
        <span class="bad">unknown</span>
        <div class="muted small">the lock service does not answer{lock.holder ? `; last taken by ${lock.holder}` : ""}</div>
      </>
    );
  if (lock.state === "free")
    return (
      <>
        <span class="muted">free</span>
        {lock.abandoned && <div class="small">expired: its holder stopped without releasing it</div>}
      </>
    );
  return (
    <>
      <span class="lock-holder">{lock.holder}</span>
      <div class="muted small">
        {lock.since && (
          <>
            since <Ago at={lock.since} now={now} />
          </>
        )}
        {lock.ttlMs !== undefined ? `${lock.since ? ", " : ""}expires in ${formatDuration(lock.ttlMs)} unless extended` : `${lock.since ? ", " : ""}in-process: no TTL`}
      </div>
    </>
  );
}

function Outcome(props: { row: DeliveryRow; ctx: PageContext }) {
  const { row, ctx } = props;
  return (
    <>
      <Badge status={row.outcome} />
      {row.duplicates > 0 && <span class="badge muted">{`${row.duplicates} duplicate${row.duplicates === 1 ? "" : "s"}`}</span>}
      {row.reason && <div class="small reason">{row.reason}</div>}
      {row.deploys.map((d) => (
        <div class="small">
          {d.deployment}:{" "}
          <a href={`${ctx.prefix}/deploys/${seg(d.id)}`}>
            <Badge status={d.status} />
          </a>
          {d.supersededBy && <span class="muted"> by {d.supersededBy.slice(0, 40)}</span>}
        </div>
      ))}
      {row.deploys.length === 0 && row.deployments.length > 0 && <div class="small muted">{`to ${row.deployments.join(", ")}`}</div>}
    </>
  );
}

/** The commit statuses waiting for GitHub, and the last error (GitHub's own message: shown as text). */
function GithubOutbox(props: { github: NonNullable<OverviewData["github"]> }) {
  const { backlog, oldestAgeSeconds, lastError } = props.github;
  return (
    <p class="muted small" id="github-outbox">
      {`GitHub commit statuses: ${backlog === 0 ? "all sent" : `${backlog} waiting`}`}
      {backlog > 0 && oldestAgeSeconds !== null && `, the oldest for ${formatAge(oldestAgeSeconds)}`}
      {lastError && `; last error at ${lastError.at} (${lastError.context} on ${lastError.repository}@${lastError.sha.slice(0, 7)}${lastError.gaveUp ? ", given up" : ""}): ${lastError.error}`}
    </p>
  );
}

export function OverviewPage(props: { ctx: PageContext; data: OverviewData }) {
  const { ctx, data } = props;
  return (
    <Layout ctx={ctx} title="Overview" refresh>
      <h1>Deployments</h1>
      <table>
        <thead>
          <tr>
            <th>Deployment</th>
            <th>Current release</th>
            <th>Last deploy</th>
            <th>Now</th>
            <th>Lock</th>
            <th class="num">Queued</th>
            <th class="num">Dead letters</th>
          </tr>
        </thead>
        <tbody>
          {data.deployments.map((d) => (
            <DeploymentRow d={d} ctx={ctx} />
          ))}
          {data.deployments.length === 0 && (
            <tr>
              <td colSpan={7} class="muted">
                No deployments are configured.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <p class="muted small">
        {`router/: ${data.router.entries} waiting`}
        {data.router.oldestAgeSeconds !== null && `, the oldest for ${formatAge(data.router.oldestAgeSeconds)}`}
      </p>
      {data.github && <GithubOutbox github={data.github} />}

      <h2>Recent deliveries</h2>
      <table>
        <thead>
          <tr>
            <th>Received</th>
            <th>Event</th>
            <th>Repository</th>
            <th>Ref</th>
            <th>Commit</th>
            <th>Outcome</th>
          </tr>
        </thead>
        <tbody>
          {data.deliveries.map((row) => (
            <tr>
              <td class="nowrap">
                <Ago at={row.receivedAt} now={ctx.now} />
              </td>
              <td>{row.event}</td>
              <td class="nowrap">{row.repository ?? "-"}</td>
              <td class="ref">{row.ref?.replace(/^refs\/heads\//, "") ?? "-"}</td>
              <td>
                <Sha sha={row.sha} />
              </td>
              <td>
                <Outcome row={row} ctx={ctx} />
              </td>
            </tr>
          ))}
          {data.deliveries.length === 0 && (
            <tr>
              <td colSpan={6} class="muted">
                No deliveries yet.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </Layout>
  );
}
