// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import { type RolloutSummary, countHostStates } from "../../../fleet/rollout-report.ts";
import type { FleetStatus } from "../../../status.ts";
import type { FleetData, FleetHost } from "../data.ts";
import { Ago, type PageContext, Sha, branchOf, formatDuration, seg } from "./common.tsx";

/**
 * A fleet deployment's rollouts and hosts. Host names, reasons and errors come from the
 * database (written by every host of the fleet): like everything else, shown as text.
 */

/** Rollout and host states (src/db/schema.ts), coloured like deploy statuses: a separate map, since "running" is a rollout's amber and a deploy's blue. */
const ROLLOUT_CLASS: Record<string, string> = {
  running: "warn",
  deploying: "warn",
  "rolling-back": "warn",
  queued: "info",
  succeeded: "ok",
  failed: "bad",
  halted: "bad",
  "rolled-back": "bad",
  superseded: "muted",
  pending: "muted",
};

export function RolloutBadge(props: { state: string }) {
  return <span class={`badge ${ROLLOUT_CLASS[props.state] ?? "muted"}`}>{props.state}</span>;
}

/** "web2 failed at health-check" (or without the step, when none was recorded). */
const failure = (r: Pick<RolloutSummary, "failedHost" | "failedStep">) => (r.failedHost ? `${r.failedHost} failed${r.failedStep ? ` at ${r.failedStep}` : ""}` : undefined);

/** A time of day (UTC) with the whole moment in its tooltip. */
function Clock(props: { at: string }) {
  return (
    <time dateTime={props.at} title={props.at}>
      {props.at.slice(11, 19)}
    </time>
  );
}

/** When the host held its slot: from its switch until it was healthy. */
function SwitchCell(props: { part: FleetHost["part"] }) {
  const p = props.part;
  if (!p?.switchStartedAt) return <span class="muted">-</span>;
  return (
    <span class="nowrap">
      <Clock at={p.switchStartedAt} /> → {p.switchEndedAt ? <Clock at={p.switchEndedAt} /> : <span class="muted">not ended</span>}
      {p.switchSeconds !== null && <span class="muted">{` (${formatDuration(Math.round(p.switchSeconds * 1000))})`}</span>}
    </span>
  );
}

function HostState(props: { host: FleetHost; rollout: boolean }) {
  const { part } = props.host;
  if (!props.rollout) return <span class="muted">-</span>;
  if (!part) return <span class="muted" title="configured after this rollout was routed: it is not one of its hosts">not in this rollout</span>;
  return (
    <>
      <RolloutBadge state={part.state} />
      {part.step && part.state !== "succeeded" && <span class="muted small step">{` ${part.step}`}</span>}
    </>
  );
}

/** Each state's count among a rollout's hosts (only those it has), with every host's state in the tooltip. */
export function HostOutcomes(props: { rollout: Pick<RolloutSummary, "hostStates"> }) {
  const counts = [...countHostStates(props.rollout)].filter(([, n]) => n > 0);
  return (
    <span title={props.rollout.hostStates.map((h) => `${h.host}: ${h.state}`).join(", ")}>
      {counts.map(([state, n], i) => (
        <>
          {i > 0 && " "}
          <span class={`badge ${ROLLOUT_CLASS[state] ?? "muted"}`}>{`${n} ${state}`}</span>
        </>
      ))}
    </span>
  );
}

export function FleetSection(props: { fleet: FleetData; ctx: PageContext }) {
  const { fleet, ctx } = props;
  const r = fleet.newest;
  return (
    <section id="fleet" class="fleet">
      <h2>Fleet</h2>
      {r ? (
        <dl class="facts">
          <dt>Newest rollout</dt>
          <dd>
            {`#${r.id} `}
            <RolloutBadge state={r.state} />
            {r.supersededBy !== null && <span class="muted">{` by #${r.supersededBy}`}</span>}
          </dd>
          <dt>Commit</dt>
          <dd>
            <Sha sha={r.sha} /> <span class="ref">{branchOf(r.ref) ?? ""}</span>
          </dd>
          <dt>Created</dt>
          <dd>
            <Ago at={r.createdAt} now={ctx.now} />
            {r.finishedAt && (
              <span class="muted">
                {", finished "}
                <Ago at={r.finishedAt} now={ctx.now} />
              </span>
            )}
          </dd>
          <dt>Rollout</dt>
          <dd class="muted">{`${r.hosts.length} host${r.hosts.length === 1 ? "" : "s"}, ${r.parallel} at a time${r.canary ? `, canary ${r.canary}` : ""}, on failure: ${r.onFailure}`}</dd>
          {r.failedHost && (
            <>
              <dt>Failed</dt>
              <dd class="bad">{failure(r)}</dd>
            </>
          )}
          {r.reason && (
            <>
              <dt>Reason</dt>
              <dd>
                <pre class="error">{r.reason}</pre>
              </dd>
            </>
          )}
        </dl>
      ) : (
        <p class="muted">No rollout yet: the first push to this deployment makes one.</p>
      )}

      <table class="fleet-hosts">
        <thead>
          <tr>
            <th>Host</th>
            <th>{r ? `State in #${r.id}` : "State"}</th>
            <th>Release</th>
            <th>Switch (UTC)</th>
            <th>Last seen</th>
            <th>Error</th>
          </tr>
        </thead>
        <tbody>
          {fleet.hosts.map((h) => (
            <tr>
              <td class="nowrap">
                {h.host}
                {h.host === fleet.hostName && <span class="muted small"> (this host)</span>}
              </td>
              <td class="nowrap">
                <HostState host={h} rollout={r !== undefined} />
              </td>
              <td>{h.part?.release ? <code class="small">{h.part.release}</code> : <span class="muted">-</span>}</td>
              <td>
                <SwitchCell part={h.part} />
              </td>
              <td class="nowrap">{h.lastSeen ? <Ago at={h.lastSeen} now={ctx.now} /> : <span class="muted">never</span>}</td>
              <td>{h.part?.error ? <pre class="error">{h.part.error}</pre> : ""}</td>
            </tr>
          ))}
        </tbody>
      </table>

      {fleet.recent.length > 0 && (
        <>
          <h3>{`Last ${fleet.recent.length} rollouts`}</h3>
          <table class="rollouts">
            <thead>
              <tr>
                <th>#</th>
                <th>Commit</th>
                <th>State</th>
                <th>Hosts</th>
                <th>Failure</th>
                <th>Created</th>
              </tr>
            </thead>
            <tbody>
              {fleet.recent.map((x) => (
                <tr>
                  <td>{`#${x.id}`}</td>
                  <td>
                    <Sha sha={x.sha} />
                  </td>
                  <td>
                    <RolloutBadge state={x.state} />
                  </td>
                  <td>
                    <HostOutcomes rollout={x} />
                  </td>
                  <td class="small reason">{failure(x) ?? (x.supersededBy !== null ? <span class="muted">{`superseded by #${x.supersededBy}`}</span> : "")}</td>
                  <td class="nowrap">
                    <Ago at={x.createdAt} now={ctx.now} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}

/** How many of the hosts the newest rollout lists have succeeded in it: they run its release. */
export function hostsLive(fleet: FleetStatus): { live: number; listed: number } | undefined {
  const r = fleet.rollout;
  if (!r) return undefined;
  const succeeded = new Set(fleet.hosts.filter((h) => h.state === "succeeded").map((h) => h.host));
  return { live: r.hosts.filter((h) => succeeded.has(h)).length, listed: r.hosts.length };
}

/** The overview's line for a fleet deployment: its newest rollout's state, and how many hosts are live on it. */
export function FleetSummary(props: { fleet: FleetStatus; deployment: string; ctx: PageContext }) {
  const { fleet, ctx } = props;
  const r = fleet.rollout;
  const count = hostsLive(fleet);
  return (
    <div class="small fleet-summary">
      {"fleet: "}
      {r && count ? (
        <>
          <a href={`${ctx.prefix}/deployments/${seg(props.deployment)}#fleet`}>{`rollout #${r.id}`}</a> <RolloutBadge state={r.state} />{" "}
          <span class={count.live === count.listed ? undefined : "muted"}>{`${count.live}/${count.listed} hosts live`}</span>
        </>
      ) : (
        <span class="muted">{`no rollout yet, ${fleet.hosts.length} host${fleet.hosts.length === 1 ? "" : "s"}`}</span>
      )}
    </div>
  );
}
