/**
 * How the systemd-run activator reads a transient switch unit that has no status file, through a
 * stand-in `systemctl` on PATH that answers as systemd does (the systemd tier runs the real one):
 * a `failed` unit is a failed switch with its exit status and systemd's reason, never "the switch
 * vanished"; a query that itself fails (no bus, a timeout) is an error, retried, never "vanished".
 */
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { SwitchQueryError, SystemdRunActivator } from "../../src/agent/activation.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

/** `systemctl` answering `is-active` and `show` from $FAKE_UNIT_* (what systemd 25x prints). */
const FAKE_SYSTEMCTL = `#!/bin/sh
count="$FAKE_DIR/calls"; echo "$*" >> "$count"
if [ -n "$FAKE_BUS_ERRORS" ] && [ "$(wc -l < "$count")" -le "$FAKE_BUS_ERRORS" ]; then
  echo "Failed to connect to bus: No such file or directory" >&2; exit 1
fi
case "$1" in
  is-active) echo "$FAKE_UNIT_ACTIVE"; [ "$FAKE_UNIT_ACTIVE" = active ] && exit 0; exit 3 ;;
  show)
    echo "LoadState=$FAKE_UNIT_LOAD"; echo "ActiveState=$FAKE_UNIT_ACTIVE"; echo "SubState=$FAKE_UNIT_SUB"
    echo "Result=$FAKE_UNIT_RESULT"; echo "ExecMainCode=$FAKE_UNIT_MAIN_CODE"; echo "ExecMainStatus=$FAKE_UNIT_MAIN_STATUS"
    exit 0 ;;
esac
echo "unexpected systemctl $*" >&2; exit 2
`;

describe("systemd-run activation: reading the transient unit", () => {
  const dir = makeTempDir("nixfleet-activation-systemd-");
  after(() => removeTempDir(dir));
  let n = 0;

  function activatorFor(unit: Record<string, string>) {
    const bin = join(dir, `bin-${++n}`);
    mkdirSync(bin);
    writeFileSync(join(bin, "systemctl"), FAKE_SYSTEMCTL);
    chmodSync(join(bin, "systemctl"), 0o755);
    const env = {
      ...process.env,
      PATH: `${bin}:${process.env.PATH}`,
      FAKE_DIR: bin,
      FAKE_UNIT_LOAD: "loaded",
      FAKE_UNIT_SUB: "",
      FAKE_UNIT_RESULT: "success",
      FAKE_UNIT_MAIN_CODE: "0",
      FAKE_UNIT_MAIN_STATUS: "0",
      ...unit,
    };
    const activator = new SystemdRunActivator(join(dir, `activations-${n}`), env, { queryRetryMs: 1 });
    // No status file: the wrapper never wrote one (killed), so only the unit can tell.
    const handle = activator.plan({ deploymentId: `dep-${n}`, role: "switch", path: "/nix/store/x" });
    return { activator, handle };
  }

  it("reads a unit that failed with an exit code as a switch that exited with it", async () => {
    const { activator, handle } = activatorFor({
      FAKE_UNIT_ACTIVE: "failed",
      FAKE_UNIT_SUB: "failed",
      FAKE_UNIT_RESULT: "exit-code",
      FAKE_UNIT_MAIN_CODE: "1",
      FAKE_UNIT_MAIN_STATUS: "2",
    });
    const status = await activator.status(handle);
    assert.equal(status.state, "exited");
    assert.equal(status.state === "exited" && status.code, 2);
    assert.match(status.state === "exited" ? (status.reason ?? "") : "", /failed.*exit-code/);
  });

  it("reads a unit whose switch was killed by a signal as exit 128+signal, with the signal named", async () => {
    const { activator, handle } = activatorFor({
      FAKE_UNIT_ACTIVE: "failed",
      FAKE_UNIT_SUB: "failed",
      FAKE_UNIT_RESULT: "signal",
      FAKE_UNIT_MAIN_CODE: "2",
      FAKE_UNIT_MAIN_STATUS: "9",
    });
    const status = await activator.status(handle);
    assert.deepEqual(
      status.state === "exited" ? { code: status.code, killed: /SIGKILL/.test(status.reason ?? "") } : status,
      { code: 137, killed: true },
    );
  });

  it("still reads a unit that is gone (collected, never recorded a status) as vanished", async () => {
    const { activator, handle } = activatorFor({ FAKE_UNIT_LOAD: "not-found", FAKE_UNIT_ACTIVE: "inactive" });
    assert.deepEqual(await activator.status(handle), { state: "vanished" });
  });

  it("reads an active unit as running", async () => {
    const { activator, handle } = activatorFor({ FAKE_UNIT_ACTIVE: "active", FAKE_UNIT_SUB: "running" });
    assert.deepEqual(await activator.status(handle), { state: "running" });
  });

  it("retries a query that failed, and answers from the retry", async () => {
    const { activator, handle } = activatorFor({
      FAKE_BUS_ERRORS: "2",
      FAKE_UNIT_ACTIVE: "active",
      FAKE_UNIT_SUB: "running",
    });
    assert.deepEqual(await activator.status(handle), { state: "running" });
  });

  it("reports a query that keeps failing as a query error, not as a vanished switch", async () => {
    const { activator, handle } = activatorFor({ FAKE_BUS_ERRORS: "100", FAKE_UNIT_ACTIVE: "inactive" });
    await assert.rejects(activator.status(handle), (err: Error) => {
      assert.ok(err instanceof SwitchQueryError, `${err}`);
      assert.match(err.message, /Failed to connect to bus/);
      assert.match(err.message, new RegExp(handle.unit!));
      return true;
    });
  });
});
