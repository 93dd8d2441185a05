// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import type { DeployData } from "../data.ts";
import { Ago, Badge, Layout, type PageContext, Sha, branchOf, formatDuration, seg } from "./common.tsx";

export function DeployPage(props: { ctx: PageContext; data: DeployData }) {
  const { ctx, data } = props;
  const { deploy: d, steps, delivery, log } = data;
  const running = d.status === "running";
  return (
    <Layout ctx={ctx} title={`Deploy #${d.id}`} refresh={false}>
      <h1>
        {`Deploy #${d.id} of `}
        <a href={`${ctx.prefix}/deployments/${seg(d.deployment)}`}>{d.deployment}</a> <Badge status={d.status} />
      </h1>
      <dl class="facts">
        <dt>Event</dt>
        <dd>{`${d.event}, attempt ${d.attempt}`}</dd>
        <dt>Ref</dt>
        <dd class="ref">{branchOf(d.ref) ?? "-"}</dd>
        <dt>Commit</dt>
        <dd>
          <Sha sha={d.sha} />
          {d.requestedSha && d.requestedSha !== d.sha && (
            <span class="muted">
              {" "}
              (the push named <Sha sha={d.requestedSha} />)
            </span>
          )}
        </dd>
        <dt>Started</dt>
        <dd>
          <Ago at={d.startedAt} now={ctx.now} />
        </dd>
        <dt>Duration</dt>
        <dd>{running ? "running" : formatDuration(d.durationMs)}</dd>
        <dt>Release</dt>
        <dd>
          <code class="small">{d.release ?? "-"}</code>
          {d.previousRelease && <span class="muted small">{` (previous: ${d.previousRelease})`}</span>}
        </dd>
        <dt>Entry</dt>
        <dd>
          <code class="small">{d.entry}</code>
        </dd>
        <dt>Delivery</dt>
        <dd>
          {delivery ? (
            <>
              <code class="small">{delivery.deliveryId}</code> {delivery.event} of {delivery.repository ?? "?"} <Badge status={delivery.outcome} />{" "}
              <Ago at={delivery.receivedAt} now={ctx.now} />
            </>
          ) : (
            <span class="muted">{d.event === "push" ? "not recorded" : `none (queued by hand: ${d.event})`}</span>
          )}
        </dd>
        {d.supersededBy && (
          <>
            <dt>Superseded by</dt>
            <dd>
              <code class="small">{d.supersededBy}</code>
            </dd>
          </>
        )}
        {d.error && (
          <>
            <dt>Error</dt>
            <dd>
              <pre class="error">{d.error}</pre>
            </dd>
          </>
        )}
      </dl>

      <h2>Steps</h2>
      {steps.length === 0 ? (
        <p class="muted">{running ? "No step has finished yet." : "No steps were recorded."}</p>
      ) : (
        <table class="steps">
          <thead>
            <tr>
              <th>#</th>
              <th>Step</th>
              <th>Title</th>
              <th>Outcome</th>
              <th class="num">Duration</th>
              <th class="num">Exit code</th>
            </tr>
          </thead>
          <tbody>
            {steps.map((s) => (
              <tr>
                <td>{s.position + 1}</td>
                <td>{s.kind}</td>
                <td class="small">{s.title}</td>
                <td>
                  <Badge status={s.ok ? "succeeded" : "failed"} />
                </td>
                <td class="num">{formatDuration(s.durationMs)}</td>
                <td class="num">{s.exitCode ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h2>Log</h2>
      {log.missing ? (
        <p class="muted">{d.logPath ? "The log file is gone (pruned or moved)." : "This deploy has no log."}</p>
      ) : (
        <>
          {log.skipped > 0 && <p class="muted small">{`The first ${log.skipped} bytes are not shown: the whole file is ${d.logPath ?? ""}`}</p>}
          <pre
            class="log"
            id="log"
            data-stream={running ? `${ctx.prefix}/deploys/${seg(d.id)}/log/stream` : undefined}
            data-offset={running ? String(log.size) : undefined}
          >
            {log.text}
          </pre>
        </>
      )}
    </Layout>
  );
}
