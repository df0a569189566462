/**
 * Waiting that respects shutdown: when the agent is told to stop, every wait in a deployment ends
 * with `Parked` — the journal already says where the deployment is, so the next start resumes it.
 */

export class Parked extends Error {
  constructor(readonly where: string) {
    super(`parked while ${where} (the agent is stopping; the journal resumes it on the next start)`);
    this.name = "Parked";
  }
}

/** Resolves after `ms`; rejects with Parked when `signal` aborts first. */
export function delay(ms: number, signal: AbortSignal | undefined, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new Parked(where));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(new Parked(where));
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function throwIfParked(signal: AbortSignal | undefined, where: string): void {
  if (signal?.aborted) throw new Parked(where);
}
