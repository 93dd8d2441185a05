// The JSX runtime is named here, not only in tsconfig.json: tsx reads the tsconfig.json of the
// working directory, which is not deployq's when pm2 or systemd start it elsewhere.
/** @jsxRuntime automatic */
/** @jsxImportSource preact */
import { Layout, type PageContext } from "./common.tsx";

export function LoginPage(props: { ctx: PageContext; error?: string | undefined }) {
  const { ctx } = props;
  return (
    <Layout ctx={ctx} title="Log in">
      <h1>Log in</h1>
      {props.error && (
        <p class="flash error" role="alert">
          {props.error}
        </p>
      )}
      <form method="post" action={`${ctx.prefix}/login`} class="login">
        <label>
          Admin token (DEPLOYQ_ADMIN_TOKEN) <input type="password" name="token" autocomplete="current-password" required autofocus />
        </label>{" "}
        <button type="submit">Log in</button>
      </form>
    </Layout>
  );
}

/** A page for an error (404, 400): the message is text. */
export function MessagePage(props: { ctx: PageContext; title: string; message: string }) {
  return (
    <Layout ctx={props.ctx} title={props.title}>
      <h1>{props.title}</h1>
      <p>{props.message}</p>
      <p>
        <a href={`${props.ctx.prefix}/`}>Back to the overview</a>
      </p>
    </Layout>
  );
}
