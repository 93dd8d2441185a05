import type { VNode } from "preact";
import { renderToString } from "preact-render-to-string";

/** A whole page: preact-render-to-string escapes every text and attribute, so no value can become markup. */
export function renderPage<P>(page: VNode<P>): string {
  return `<!doctype html>${renderToString(page)}`;
}
