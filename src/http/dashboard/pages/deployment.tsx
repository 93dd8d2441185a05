// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import type { Deploy } from "../../../db/schema.ts";
import type { EntryInfo } from "../../../queue/admin.ts";
import type { DeploymentData } from "../data.ts";
import { Ago, Badge, Csrf, Layout, type PageContext, Sha, branchOf, formatAge, formatDuration, seg } from "./common.tsx";
import { FleetSection } from "./fleet.tsx";

const CHART_W = 600;
const CHART_H = 120;

/** The durations of the last deploys that ran (oldest on the left), as bars coloured by outcome: an inline SVG, no script. */
export function DurationChart(props: { history: Deploy[] }) {
  const ran = props.history.filter((d) => d.durationMs !== null && d.status !== "superseded" && d.status !== "already-deployed").slice(0, 50).reverse();
  if (ran.length === 0) return <p class="muted">No finished deploys yet.</p>;
  const max = Math.max(...ran.map((d) => d.durationMs ?? 0), 1);
  const slot = CHART_W / 50;
  return (
    <svg class="chart" viewBox={`0 0 ${CHART_W} ${CHART_H + 16}`} width={CHART_W} height={CHART_H + 16} role="img" aria-label={`Durations of the last ${ran.length} deploys`}>
      <line x1="0" y1={CHART_H} x2={CHART_W} y2={CHART_H} class="axis" />
      {ran.map((d, i) => {
        const h = Math.max(2, Math.round(((d.durationMs ?? 0) / max) * (CHART_H - 4)));
        return (
          <rect x={i * slot + 1} y={CHART_H - h} width={slot - 2} height={h} class={`bar ${d.status}`}>
            <title>{`#${d.id} ${d.status}, ${formatDuration(d.durationMs)}, ${d.startedAt.toISOString()}`}</title>
          </rect>
        );
      })}
      <text x="0" y={CHART_H + 13} class="label">{`max ${formatDuration(max)}`}</text>
    </svg>
  );
}

export function History(props: { history: Deploy[]; ctx: PageContext }) {
  const { ctx } = props;
  return (
    <table>
      <thead>
        <tr>
          <th>#</th>
          <th>Outcome</th>
          <th>Event</th>
          <th>Ref</th>
          <th>Commit</th>
          <th>Started</th>
          <th class="num">Duration</th>
          <th>Error</th>
        </tr>
      </thead>
      <tbody>
        {props.history.map((d) => (
          <tr>
            <td>
              <a href={`${ctx.prefix}/deploys/${seg(d.id)}`}>{`#${d.id}`}</a>
            </td>
            <td>
              <Badge status={d.status} />
            </td>
            <td>{d.event}</td>
            <td class="ref">{branchOf(d.ref) ?? "-"}</td>
            <td>
              <Sha sha={d.sha} />
            </td>
            <td>
              <Ago at={d.startedAt} now={ctx.now} />
            </td>
            <td class="num">{formatDuration(d.durationMs)}</td>
            <td class="small reason">{d.error ? d.error.split("\n")[0]!.slice(0, 160) : ""}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Where an action's form sends the browser back to: the page it is on (a fixed choice, never a URL from the request). */
export type Back = "deployment" | "queues";

export function Entries(props: { entries: EntryInfo[]; ctx: PageContext; requeueInto?: string | undefined; back?: Back }) {
  const { ctx } = props;
  if (props.entries.length === 0) return <p class="muted">Empty.</p>;
  return (
    <table>
      <thead>
        <tr>
          <th>Entry</th>
          <th>Age</th>
          <th>Event</th>
          <th>Ref</th>
          <th>Commit</th>
          <th>Attempts</th>
          <th>Error</th>
          {props.requeueInto !== undefined && <th />}
        </tr>
      </thead>
      <tbody>
        {props.entries.map((e) => (
          <tr>
            <td>
              <code class="small">{e.entry}</code>
            </td>
            <td>{formatAge(e.ageSeconds)}</td>
            <td>{e.problem ?? e.event ?? "-"}</td>
            <td class="ref">{branchOf(e.ref) ?? "-"}</td>
            <td>
              <Sha sha={e.sha} />
            </td>
            <td class="num">{e.attempts ?? ""}</td>
            <td>{e.lastError ? <pre class="error">{e.lastError}</pre> : ""}</td>
            {props.requeueInto !== undefined && (
              <td>
                <form method="post" action={`${ctx.prefix}/queues/dead-letter/${seg(props.requeueInto)}/requeue`}>
                  <Csrf ctx={ctx} />
                  <input type="hidden" name="entry" value={e.entry} />
                  <input type="hidden" name="back" value={props.back ?? "deployment"} />
                  <button type="submit">Requeue</button>
                </form>
              </td>
            )}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function DeadLetterActions(props: { name: string; count: number; ctx: PageContext; back?: Back }) {
  const { ctx, name } = props;
  if (props.count === 0) return null;
  return (
    <div class="actions">
      <form method="post" action={`${ctx.prefix}/queues/dead-letter/${seg(name)}/requeue`}>
        <Csrf ctx={ctx} />
        <input type="hidden" name="back" value={props.back ?? "deployment"} />
        <button type="submit">{`Requeue all ${props.count}`}</button>
      </form>
      <form method="post" action={`${ctx.prefix}/queues/dead-letter/${seg(name)}/flush`}>
        <Csrf ctx={ctx} />
        <input type="hidden" name="back" value={props.back ?? "deployment"} />
        <label>
          <input type="checkbox" name="confirm" value="yes" required /> {`delete all ${props.count} for good`}
        </label>{" "}
        <button type="submit" class="danger">
          Flush
        </button>
      </form>
    </div>
  );
}

export function DeploymentPage(props: { ctx: PageContext; data: DeploymentData }) {
  const { ctx, data } = props;
  const s = data.status;
  const name = s.deployment;
  return (
    <Layout ctx={ctx} title={name} refresh>
      <h1>{name}</h1>
      <p class="muted">
        {s.repository} · branch {s.branch} · {data.strategy}
        {!s.enabled && " · disabled"}
      </p>
      <p>
        {data.fleet ? `Current on ${data.fleet.hostName}: ` : "Current: "}
        {s.current.sha ? <Sha sha={s.current.sha} /> : <span class="muted">nothing deployed</span>} <span class="ref">{s.current.ref ?? ""}</span>{" "}
        <span class="muted small">{s.current.release ?? ""}</span>
      </p>

      <h2>Actions</h2>
      <div class="actions">
        <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/deploy`}>
          <Csrf ctx={ctx} />
          <label>
            Deploy ref <input type="text" name="ref" placeholder={s.branch} maxLength={255} autocomplete="off" />
          </label>{" "}
          <label>
            <input type="checkbox" name="force" value="yes" /> force
          </label>{" "}
          <button type="submit">Deploy</button>
        </form>
        {data.strategy === "releases" && (
          <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/rollback`}>
            <Csrf ctx={ctx} />
            <button type="submit">Roll back to the previous good release</button>
          </form>
        )}
        {data.running && (
          <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/cancel`}>
            <Csrf ctx={ctx} />
            <button type="submit" disabled={!data.running.cancellable} title={data.running.cancellable ? "" : "past its switch: it finishes, or rolls back by itself"}>
              {`Cancel deploy #${data.running.deployId}`}
            </button>
          </form>
        )}
        {s.paused ? (
          <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/resume`}>
            <Csrf ctx={ctx} />
            <span class="bad">
              {"invalid" in s.paused ? `Paused: ${s.paused.invalid}` : `Paused by ${s.paused.by} at ${s.paused.at}${s.paused.reason ? `: ${s.paused.reason}` : ""}${s.paused.until ? ` (until ${s.paused.until})` : ""}`}
            </span>{" "}
            <button type="submit">Resume</button>
          </form>
        ) : (
          <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/pause`}>
            <Csrf ctx={ctx} />
            <label>
              Pause, because <input type="text" name="reason" maxLength={1000} autocomplete="off" />
            </label>{" "}
            <label>
              for <input type="text" name="for" placeholder="until resumed (or 30m, 2h, 1d)" maxLength={10} autocomplete="off" />
            </label>{" "}
            <button type="submit">Pause</button>
          </form>
        )}
      </div>

      {data.fleet && <FleetSection fleet={data.fleet} ctx={ctx} />}

      {data.strategy === "releases" && (
        <>
          <h2>Releases</h2>
          {data.releases.length === 0 ? (
            <p class="muted">No releases yet.</p>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Release</th>
                  <th>State</th>
                  <th>Commit</th>
                  <th>Ref</th>
                  <th>Note</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {data.releases.map((r) => {
                  const state = r.current ? "current" : !r.meta ? "incomplete" : r.meta.bad ? "bad" : "good";
                  return (
                    <tr>
                      <td>
                        <code class="small">{r.name}</code>
                      </td>
                      <td>
                        <Badge status={state} />
                      </td>
                      <td>
                        <Sha sha={r.meta?.sha} />
                      </td>
                      <td class="ref">{branchOf(r.meta?.ref) ?? "-"}</td>
                      <td class="small reason">{r.meta?.bad ? r.meta.bad.reason.replace(/\s+/g, " ").slice(0, 200) : ""}</td>
                      <td>
                        {state === "good" && (
                          <form method="post" action={`${ctx.prefix}/deployments/${seg(name)}/rollback`}>
                            <Csrf ctx={ctx} />
                            <input type="hidden" name="to" value={r.name} />
                            <button type="submit">Roll back to this</button>
                          </form>
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          )}
        </>
      )}

      <h2>Deploy durations</h2>
      <DurationChart history={data.history} />

      <h2>History</h2>
      <History history={data.history} ctx={ctx} />

      <h2>{`Queued (${data.queued.length})`}</h2>
      {s.waitingForChecks ? (
        <p data-waiting-for-checks={s.waitingForChecks.sha}>
          {`Waiting for checks ${s.waitingForChecks.pending.join(", ")} on ${s.waitingForChecks.sha} since ${s.waitingForChecks.since}${s.waitingForChecks.nextLookAt ? `; next look at ${s.waitingForChecks.nextLookAt}` : ""} (a check event for the commit looks sooner)`}
        </p>
      ) : null}
      <Entries entries={data.queued} ctx={ctx} />

      <h2 id={`dead-letter-${name}`}>{`Dead letters (${data.deadLetters.length})`}</h2>
      <DeadLetterActions name={name} count={data.deadLetters.length} ctx={ctx} />
      <Entries entries={data.deadLetters} ctx={ctx} requeueInto={name} />

      <h2>Recent actions</h2>
      {data.actions.length === 0 ? (
        <p class="muted">None from the dashboard yet.</p>
      ) : (
        <table class="actions-log">
          <thead>
            <tr>
              <th>When</th>
              <th>Action</th>
              <th>Outcome</th>
              <th>What</th>
              <th>From</th>
            </tr>
          </thead>
          <tbody>
            {data.actions.map((a) => (
              <tr>
                <td class="nowrap">
                  <Ago at={a.at} now={ctx.now} />
                </td>
                <td>{a.action}</td>
                <td>
                  <Badge status={a.ok ? "done" : "refused"} />
                </td>
                <td class="small reason">{a.message}</td>
                <td class="small">{`${a.origin}${a.client ? `, ${a.client}` : ""}`}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Layout>
  );
}
