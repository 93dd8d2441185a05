// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import type { QueueData } from "../data.ts";
import { Layout, type PageContext, formatAge } from "./common.tsx";
import { DeadLetterActions, Entries } from "./deployment.tsx";

export function QueuesPage(props: { ctx: PageContext; queues: QueueData[] }) {
  const { ctx } = props;
  return (
    <Layout ctx={ctx} title="Queues" refresh>
      <h1>Queues</h1>
      <table>
        <thead>
          <tr>
            <th>Queue</th>
            <th class="num">Entries</th>
            <th>Oldest</th>
            <th>Directory</th>
          </tr>
        </thead>
        <tbody>
          {props.queues.map((q) => (
            <tr>
              <td>{q.total > 0 ? <a href={`#${q.label.replace("/", "-")}`}>{q.label}</a> : q.label}</td>
              <td class="num">{q.total}</td>
              <td>{q.entries[0] ? formatAge(q.entries[0].ageSeconds) : "-"}</td>
              <td>
                <code class="small">{q.dir}</code>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {props.queues
        .filter((q) => q.total > 0)
        .map((q) => (
          <section>
            <h2 id={q.label.replace("/", "-")}>{`${q.label} (${q.total})`}</h2>
            {q.entries.length < q.total && <p class="muted small">{`The oldest ${q.entries.length} are shown.`}</p>}
            {q.deadLetter && q.owner !== undefined && <DeadLetterActions name={q.owner} count={q.total} ctx={ctx} back="queues" />}
            <Entries entries={q.entries} ctx={ctx} requeueInto={q.deadLetter ? q.owner : undefined} back="queues" />
          </section>
        ))}
    </Layout>
  );
}
