// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import type { ComponentChildren } from "preact";

/**
 * What every page shares. Everything on a page is JSX rendered by preact-render-to-string,
 * which escapes every text and attribute value: a branch name, a commit message or a log
 * line from a push is shown as text and can never become markup.
 */

export interface PageContext {
  /** The dashboard's path prefix, e.g. "/dashboard". */
  prefix: string;
  /** The stylesheet's and the script's URLs (with their content hash: they are cached for a year). */
  assets: { css: string; js: string };
  /** The session's CSRF token (absent on the login page). */
  csrf: string | undefined;
  flash?: { kind: "ok" | "error"; text: string } | undefined;
  now: number;
}

export function Layout(props: { ctx: PageContext; title: string; refresh?: boolean; children: ComponentChildren }) {
  const { ctx } = props;
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <title>{`${props.title} · deployq`}</title>
        <link rel="stylesheet" href={ctx.assets.css} />
        <script src={ctx.assets.js} defer />
      </head>
      <body data-refresh={props.refresh ? "5000" : undefined}>
        <header class="top">
          <a class="brand" href={`${ctx.prefix}/`}>
            deployq
          </a>
          {ctx.csrf !== undefined && (
            <nav>
              <a href={`${ctx.prefix}/`}>Overview</a>
              <a href={`${ctx.prefix}/queues`}>Queues</a>
              <form method="post" action={`${ctx.prefix}/logout`} class="inline">
                <Csrf ctx={ctx} />
                <button type="submit" class="link">
                  Log out
                </button>
              </form>
            </nav>
          )}
        </header>
        <main id="main">
          {ctx.flash && (
            <p class={`flash ${ctx.flash.kind}`} role="status">
              {ctx.flash.text}
            </p>
          )}
          {props.children}
        </main>
      </body>
    </html>
  );
}

export function Csrf(props: { ctx: PageContext }) {
  return <input type="hidden" name="_csrf" value={props.ctx.csrf ?? ""} />;
}

export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

export function formatAge(seconds: number): string {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

/** A moment, as "3m ago", with the exact time in its tooltip. */
export function Ago(props: { at: Date | string | null | undefined; now: number }) {
  if (!props.at) return <span class="muted">-</span>;
  const at = typeof props.at === "string" ? new Date(props.at) : props.at;
  if (Number.isNaN(at.getTime())) return <span class="muted">-</span>;
  return (
    <time dateTime={at.toISOString()} title={at.toISOString()}>
      {`${formatAge((props.now - at.getTime()) / 1000)} ago`}
    </time>
  );
}

export function Sha(props: { sha: string | null | undefined }) {
  if (!props.sha) return <span class="muted">-</span>;
  return (
    <code title={props.sha} class="sha">
      {props.sha.slice(0, 7)}
    </code>
  );
}

const STATUS_CLASS: Record<string, string> = {
  succeeded: "ok",
  routed: "ok",
  queued: "info",
  running: "info",
  retrying: "warn",
  "already-deployed": "muted",
  superseded: "muted",
  duplicate: "muted",
  ping: "muted",
  voided: "muted",
  interrupted: "warn",
  failed: "bad",
  "dead-letter": "bad",
  bad: "bad",
  current: "ok",
  good: "ok",
  incomplete: "warn",
  done: "ok",
  refused: "bad",
};

export function Badge(props: { status: string }) {
  return <span class={`badge ${STATUS_CLASS[props.status] ?? "muted"}`}>{props.status}</span>;
}

export const branchOf = (ref: string | null | undefined): string | undefined => ref?.replace(/^refs\/heads\//, "") || undefined;

/** A path segment of the dashboard's own URLs: deployment names and entry names are validated, but encode anyway. */
export const seg = (value: string | number) => encodeURIComponent(String(value));
