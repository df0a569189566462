/** Loading data from the API: one-shot with reload, on an interval, and rollout watches. */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/**
 * Runs `load` when `deps` change and every `everyMs` (if given); keeps the last good data while
 * a reload runs or fails, so the page does not flicker.
 */
export function useLoad<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: unknown[],
  everyMs?: number,
): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    const abort = new AbortController();
    setLoading(true);
    load(abort.signal).then(
      (value) => {
        if (abort.signal.aborted) return;
        setData(value);
        setError(undefined);
        setLoading(false);
      },
      (err: unknown) => {
        if (abort.signal.aborted) return;
        setError(err);
        setLoading(false);
      },
    );
    return () => abort.abort();
  }, [...deps, tick]);
  useEffect(() => {
    if (!everyMs) return;
    const timer = setInterval(reload, everyMs);
    return () => clearInterval(timer);
  }, [everyMs, reload]);
  return { data, error, loading, reload };
}

/** Re-renders every `ms` (for "5 s ago" labels). */
export function useNow(ms = 5000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}

/**
 * Consumes a server stream for as long as the component is mounted, reconnecting after a pause
 * when it breaks (a restart of the control plane, a proxy timeout); a stream the server ends
 * normally (WatchRollout once the rollout is over) is not reopened. `onMessage` gets every
 * message; `onError` the latest break (cleared by the next message).
 */
export function useStream<T>(
  open: (signal: AbortSignal) => AsyncIterable<T>,
  onMessage: (message: T) => void,
  onError: (err: unknown) => void,
  deps: unknown[],
  retryMs = 2000,
): void {
  const handlers = useRef({ onMessage, onError });
  handlers.current = { onMessage, onError };
  useEffect(() => {
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      try {
        for await (const message of open(abort.signal)) {
          handlers.current.onError(undefined);
          handlers.current.onMessage(message);
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        handlers.current.onError(err);
        timer = setTimeout(run, retryMs);
      }
    };
    void run();
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, deps);
}
