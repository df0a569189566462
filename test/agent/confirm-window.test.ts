/**
 * The confirm window, in-process over the fake host: a new generation that takes its host down
 * while it is being verified (a kernel panic, a power cut, a watchdog reboot). The host reboots
 * into its boot default. With the confirm order that is still the previous generation: the
 * restarted agent reports ROLLED_BACK_BY_REBOOT, quarantines the path and never switches to it
 * again at that revision. With the plain `switch` order the unproven generation is already the
 * boot default, so the host boots it again and again — the same expectations fail, which this
 * file asserts explicitly so the feature cannot silently regress to the old order.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { type ActivationOrder, Journal } from "../../src/agent/journal/journal.js";
import { decodeRow } from "../../src/agent/transport/outbox-row.js";
import type { ReportRequest } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { tempDir } from "../fixtures/tmp.js";
import { agentOver, GEN1, GEN2, World } from "./harness/fake-host.js";

class HostRebooted extends Error {}

const desired = { path: GEN2, cacheUrl: "", revision: 9n, rolloutId: "r1" };
const signal = () => new AbortController().signal;

/** A World whose GEN2 reboots the host whenever its health is checked (after a switch). */
function panickingWorld(): World {
  const world = new World();
  world.cache.add(GEN2);
  world.healthy.add(GEN2);
  const health = world.health();
  world.health = () => ({
    ...health,
    verify: async (generation: string) => {
      if (generation === GEN2 && world.current === GEN2) {
        world.reboot();
        throw new HostRebooted("the host rebooted while verifying");
      }
      return health.verify(generation);
    },
  });
  return world;
}

interface Result {
  boots: number;
  outcome: string | null;
  reported: Outcome[];
  quarantined: boolean;
  current: string | null;
  bootDefault: string | null;
  gen2Switches: number;
}

/** Deploys GEN2 and keeps booting (agent start: recover, then cycles) up to `maxBoots` times. */
async function deploy(order: ActivationOrder, dir: string, maxBoots = 4): Promise<Result> {
  const world = panickingWorld();
  const path = join(dir, `${order}.db`);
  let boots = 0;
  for (; boots < maxBoots; boots++) {
    const { journal } = Journal.open(path);
    try {
      const agent = agentOver(world, journal, { config: { activationOrder: order } });
      await agent.recover(signal());
      await agent.runCycle(desired, signal());
      await agent.runCycle(desired, signal());
      break;
    } catch (err) {
      if (!(err instanceof HostRebooted)) throw err;
    } finally {
      journal.close();
    }
  }
  const { journal } = Journal.open(path);
  try {
    const dep = journal.recent(10).find((d) => d.desired === GEN2 && d.phase === "done");
    const reported = journal
      .outbox()
      .filter((i) => i.kind === "report" && i.deploymentId === dep?.id)
      .map((i) => (decodeRow(i) as ReportRequest).outcome);
    return {
      boots,
      outcome: dep?.outcome ?? null,
      reported,
      quarantined: journal.quarantineEntry(GEN2)?.revision === 9n,
      current: world.current,
      bootDefault: world.bootDefault,
      gen2Switches: world.switchesTo(GEN2).length,
    };
  } finally {
    journal.close();
  }
}

/** What the confirm window promises after a reboot during verification. */
function rolledBackByReboot(r: Result): boolean {
  return (
    r.outcome === "ROLLED_BACK_BY_REBOOT" &&
    r.reported.at(-1) === Outcome.ROLLED_BACK_BY_REBOOT &&
    r.quarantined &&
    r.current === GEN1 &&
    r.bootDefault === GEN1 &&
    r.gen2Switches === 1
  );
}

describe("the confirm window: a reboot while verifying", () => {
  for (const order of ["confirm", "switch"] as const) {
    it(`${order} order: ${order === "confirm" ? "rolled back by the reboot, reported and quarantined" : "the unproven generation boots again (the confirm test fails)"}`, async (t) => {
      const r = await deploy(order, tempDir(t));
      if (order === "confirm") {
        assert.deepEqual(
          { outcome: r.outcome, reported: r.reported, quarantined: r.quarantined },
          {
            outcome: "ROLLED_BACK_BY_REBOOT",
            reported: [Outcome.APPLYING, Outcome.ROLLED_BACK_BY_REBOOT],
            quarantined: true,
          },
        );
        assert.equal(r.current, GEN1, "the host runs the previous generation");
        assert.equal(r.bootDefault, GEN1, "and boots it");
        assert.equal(r.gen2Switches, 1, "the new generation was activated once, never again");
        assert.equal(r.boots, 1, "one reboot; the agent then settled and stays on previous");
        assert.ok(rolledBackByReboot(r));
      } else {
        // The same expectations, with the plain switch order, do not hold: the host boots the
        // generation that took it down, and the deployment never settles.
        assert.equal(rolledBackByReboot(r), false, "the switch order has no confirm window");
        assert.equal(r.bootDefault, GEN2, "the unproven generation is the boot default");
        assert.equal(r.boots, 4, "it keeps rebooting into it");
      }
    });
  }
});
