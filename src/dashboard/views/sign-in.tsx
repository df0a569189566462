/** Sign-in with an API key; the server says whether it is valid and what role it has. */

import { ConnectError } from "@connectrpc/connect";
import { useState } from "preact/hooks";
import { describeError, isUnauthenticated, keyProblem, type Session } from "../session.js";

export function SignIn({
  notice,
  signIn,
  onSignedIn,
}: {
  notice: string | null;
  signIn: (key: string) => Promise<Session>;
  onSignedIn: (s: Session) => void;
}) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const trimmed = key.trim();
    const problem = keyProblem(trimmed);
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await signIn(trimmed));
    } catch (err) {
      setError(
        isUnauthenticated(err)
          ? `The control plane refused this key: ${ConnectError.from(err).rawMessage}.`
          : describeError(err),
      );
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="signin">
      <form class="card" onSubmit={submit}>
        <h1>nixfleet</h1>
        <p class="muted">Sign in with an API key. It is kept for this browser tab's session only.</p>
        {notice ? <p class="notice">{notice}</p> : null}
        <label for="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autocomplete="off"
          spellcheck={false}
          placeholder="nfk-…"
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
        />
        {error ? (
          <div class="error" role="alert">
            {error}
          </div>
        ) : null}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted small">
          An admin makes keys with <code>nixfleet keys create --role readonly</code> (or <code>deploy</code>).
        </p>
      </form>
    </div>
  );
}
