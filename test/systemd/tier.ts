/**
 * Whether the systemd tier runs here. It needs root and systemd-nspawn; without them every
 * describe() of the tier is skipped with the reason, printed once — never silently.
 */
import { nspawnUnavailable } from "../fixtures/nspawn.js";

const reason = nspawnUnavailable();
if (reason) process.stderr.write(`systemd tier skipped: ${reason}\n`);

/** Options for a describe() of the tier: `{ skip: reason }` when it cannot run. */
export const tier: { skip: string | false } = { skip: reason ? `systemd tier: ${reason}` : false };
