/** Small pieces every page uses. */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { ComponentChildren } from "preact";
import { absolute, ago } from "./format.js";
import { describeError } from "./session.js";

export type Tone = "good" | "bad" | "warn" | "busy" | "muted" | "info";

export function Badge({
  tone,
  children,
  title,
}: {
  tone: Tone;
  children: ComponentChildren;
  title?: string;
}) {
  return (
    <span class={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

export function ErrorBox({ error }: { error: unknown }) {
  if (error === undefined || error === null) return null;
  return (
    <div class="error" role="alert">
      {describeError(error)}
    </div>
  );
}

export function When({ ts, now }: { ts: Timestamp | undefined; now: number }) {
  return <time title={absolute(ts)}>{ago(ts, now)}</time>;
}

export function Section({
  title,
  children,
  actions,
}: {
  title: string;
  children: ComponentChildren;
  actions?: ComponentChildren;
}) {
  return (
    <section class="card">
      <header class="card-head">
        <h2>{title}</h2>
        {actions ? <div class="card-actions">{actions}</div> : null}
      </header>
      {children}
    </section>
  );
}

export function Loading({ what }: { what: string }) {
  return <p class="muted">Loading {what}…</p>;
}

/** A store path shown short, whole on hover and selectable. */
export function StorePath({ path }: { path: string }) {
  if (!path) return <span class="muted">—</span>;
  const m = /^\/nix\/store\/([0-9a-z]{32})-(.+)$/.exec(path);
  return (
    <code class="path" title={path}>
      {m ? `${m[2]} · ${m[1]!.slice(0, 7)}` : path}
    </code>
  );
}
