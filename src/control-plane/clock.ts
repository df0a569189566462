/**
 * The control plane's notion of "now" for everything it stores: the wall clock, nothing else.
 * Time only measures durations (health timeouts, soaks, staleness, retention). Ordering — "was
 * this report received after the batch started?" — comes from the store's evidence sequence
 * (`evidence_sequence`), never from time: a clock that handed out `last + 1 ms` to stay strictly
 * increasing let traffic drive it ahead of wall time (150,000 heartbeats moved it minutes
 * ahead and timed out other machines' health gates early).
 */

export interface Clock {
  now(): number;
}

export const wallClock: Clock = { now: () => Date.now() };
