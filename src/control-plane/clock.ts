/**
 * The control plane's notion of "now" for everything it stores. It never returns the same
 * millisecond twice (nor goes backwards within a process), so "received after the batch
 * started" is exact: a report handled before a batch start always has a smaller timestamp than
 * the start, even when both fall in the same wall-clock millisecond.
 */

export interface Clock {
  now(): number;
}

export function strictlyIncreasingClock(source: () => number = Date.now): Clock {
  let last = 0;
  return {
    now() {
      const t = source();
      last = t > last ? t : last + 1;
      return last;
    },
  };
}
