/**
 * The dashboard in a real browser (Debian's Chromium) against a real fleet: the control-plane
 * process with --dashboard-listen, three agents on real Nix. A deploy key signs in, sees the
 * fleet, starts a canary rollout from the page and watches it complete live; starts one whose
 * canary's switch fails, sees the rollout pause with the canary's reason, reads the switch output
 * on the host page, and cancels with revert. A readonly key sees no mutation buttons, and the
 * server refuses the mutation when the page forges it anyway.
 *
 * NIXFLEET_UPDATE_SCREENSHOT=1 also writes docs/dashboard.png and docs/dashboard-fleet.png.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Locator, Page } from "playwright-core";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { REPO_ROOT } from "../fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { type Browser, chromiumMissing, launchChromium } from "./chromium.js";
import { ensureDashboardBuilt } from "./dashboard-build.js";

const missing = chromiumMissing();
if (missing) process.stdout.write(`# skipping the browser tests: ${missing}\n`);

const HOSTS = [
  { name: "web-01", tags: ["web", "eu"] },
  { name: "web-02", tags: ["web", "us"] },
  { name: "db-01", tags: ["db", "eu"] },
];
const LONG = 60_000;

/** What the user reads in an element (layout-aware, unlike textContent). */
function textOf(locator: Locator): Promise<string> {
  // biome-ignore lint/performance/useDomNodeTextContent: a Playwright locator, not a DOM node
  return locator.innerText();
}

describe("dashboard in Chromium against a real fleet", { skip: missing ?? false }, () => {
  const dir = makeTempDir("nixfleet-browser-");
  let fleet: Fleet;
  let browser: Browser;
  let dashboardUrl = "";
  let deployKey = "";
  let readonlyKey = "";
  const pageErrors: string[] = [];
  let pausedRolloutId = "";

  before(async () => {
    ensureDashboardBuilt();
    fleet = await Fleet.create({
      dir,
      hosts: HOSTS,
      systems: [{ label: "v2" }, { label: "broken", switch: "fail", exitCode: 3 }],
      controlPlaneArgs: ["--dashboard-listen", "127.0.0.1:0"],
    });
    dashboardUrl = String(fleet.cp.lines.find((l) => l.msg === "listening")?.["dashboardUrl"] ?? "");
    assert.match(dashboardUrl, /^https:\/\/127\.0\.0\.1:\d+$/, "the control plane logs its dashboard URL");
    deployKey = await fleet.createKeyLocally("ops", "deploy");
    readonlyKey = await fleet.createKeyLocally("viewer", "readonly");
    fleet.startAgents();
    await waitFor(
      "three connected machines",
      async () => (await fleet.status()).machines.filter((m) => m.connected).length === 3,
      LONG,
    );
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await fleet?.close();
    removeTempDir(dir);
  });

  async function openPage(): Promise<Page> {
    const page = await browser.context.newPage();
    page.on("pageerror", (err) => pageErrors.push(`pageerror: ${err.message}`));
    page.on("console", (m) => {
      // A refused sign-in logs its 401 as a failed resource; anything about the policy is a bug.
      if (/Content.Security.Policy|Refused to/i.test(m.text())) pageErrors.push(`console: ${m.text()}`);
    });
    return page;
  }

  async function signIn(page: Page, key: string): Promise<void> {
    await page.goto(`${dashboardUrl}/`);
    await page.getByLabel("API key").fill(key);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByTestId("who").waitFor();
  }

  const statusText = (page: Page) => textOf(page.getByTestId("rollout-status"));

  async function startRollout(page: Page, release: string, hosts: string): Promise<string> {
    await page.goto(`${dashboardUrl}/#/rollouts`);
    await page.getByRole("button", { name: "Start a rollout…" }).click();
    const form = page.getByTestId("start-rollout");
    await form.locator("select[name=release]").selectOption(release);
    await form.getByLabel("these machines").check();
    await form.locator("input[name=target-list]").fill(hosts);
    await form
      .locator("select[name=strategy]")
      .selectOption({ label: "canary: one machine first, then the rest" });
    await form.locator("input[name=health-timeout]").fill("90");
    await form.getByRole("button", { name: "Start rollout" }).click();
    await page.waitForURL(/#\/rollouts\/r-/);
    return decodeURIComponent(new URL(page.url()).hash.replace("#/rollouts/", ""));
  }

  it(
    "serves the page with a strict CSP and no client-certificate request; a wrong key is refused",
    { timeout: LONG },
    () =>
      fleet.explain(async () => {
        const page = await openPage();
        const response = await page.goto(`${dashboardUrl}/`);
        const csp = response?.headers()["content-security-policy"] ?? "";
        assert.match(csp, /default-src 'self'/);
        assert.match(csp, /script-src 'self'(;|$)/, "no inline scripts");
        assert.match(csp, /style-src 'self'(;|$)/, "no inline styles");
        await page.getByLabel("API key").fill(`nfk-${"0".repeat(64)}`);
        await page.getByRole("button", { name: "Sign in" }).click();
        const alert = page.getByRole("alert");
        await alert.waitFor();
        assert.match(await textOf(alert), /unknown or revoked API key/);
        assert.equal(
          await page.evaluate("sessionStorage.getItem('nixfleet.apiKey')"),
          null,
          "a refused key is not kept",
        );
        await page.close();
      }),
  );

  it("a deploy key sees the fleet with its counts and filters", { timeout: LONG }, () =>
    fleet.explain(async () => {
      const page = await openPage();
      await signIn(page, deployKey);
      assert.match(await textOf(page.getByTestId("who")), /ops · deploy/);
      const table = page.getByTestId("fleet-table");
      for (const h of HOSTS) await table.locator(`tr[data-machine="${h.name}"]`).waitFor();
      await waitFor(
        "every row to show a connected agent",
        async () => (await table.locator("tr[data-machine]", { hasText: "connected" }).count()) === 3,
        LONG,
        200,
      );
      assert.match(await textOf(page.getByTestId("counts")), /3\s*machines/i);
      // The key stays for this tab's session only.
      assert.equal(await page.evaluate("sessionStorage.getItem('nixfleet.apiKey')"), deployKey);
      assert.equal(await page.evaluate("localStorage.length"), 0);

      await page.getByLabel("Tag").selectOption("db");
      assert.equal(await table.locator("tr[data-machine]").count(), 1);
      await page.getByLabel("Tag").selectOption("");
      await page.getByLabel("Filter machines").fill("web-0");
      assert.equal(await table.locator("tr[data-machine]").count(), 2);
      await page.getByLabel("Filter machines").fill("");
      await page.getByLabel("State").selectOption("unhealthy");
      assert.equal(await table.locator("tr[data-machine]").count(), 0);
      await page.close();
    }),
  );

  it(
    "the fleet page follows WatchFleet: a new machine and a lifecycle change appear without re-reading",
    { timeout: LONG },
    () =>
      fleet.explain(async () => {
        const page = await openPage();
        const statusCalls: string[] = [];
        page.on("request", (r) => {
          if (r.url().endsWith("/GetFleetStatus")) statusCalls.push(r.url());
        });
        await signIn(page, deployKey);
        const table = page.getByTestId("fleet-table");
        for (const h of HOSTS) await table.locator(`tr[data-machine="${h.name}"]`).waitFor();
        await fleet.cliOk(["machines", "register", "watch-01", "--tags", "web"]);
        await table.locator('tr[data-machine="watch-01"]', { hasText: "pending" }).waitFor({ timeout: LONG });
        await fleet.cliOk(["machines", "set-lifecycle", "watch-01", "active"]);
        await table.locator('tr[data-machine="watch-01"]', { hasText: "active" }).waitFor({ timeout: LONG });
        assert.match(await textOf(page.getByTestId("counts")), /4\s*machines/i);
        assert.deepEqual(statusCalls, [], "the page read GetFleetStatus instead of following the stream");
        await page.close();
      }),
  );

  it("starts a canary rollout from the page and watches it complete live", { timeout: 3 * LONG }, () =>
    fleet.explain(async () => {
      const release = await fleet.release("v2");
      const page = await openPage();
      await signIn(page, deployKey);
      const id = await startRollout(page, release, "web-01, web-02");
      // A reload would drop this marker: whatever changes below arrived over the open stream.
      await page.evaluate("window.__sameDocument = true");
      await page.getByTestId("batches").waitFor();
      await waitFor(
        "the rollout to complete on the page",
        async () => (await statusText(page)) === "completed",
        2 * LONG,
        250,
      );
      assert.equal(await page.evaluate("window.__sameDocument === true"), true, "updated without a reload");
      const verdicts = page.getByTestId("verdicts");
      for (const name of ["web-01", "web-02"])
        assert.match(await textOf(verdicts.locator(`tr[data-machine="${name}"]`)), /healthy/);
      const events = await textOf(page.getByTestId("events"));
      assert.match(events, /batch succeeded b1/);
      assert.match(events, /completed/);
      const status = await fleet.status();
      for (const name of ["web-01", "web-02"]) {
        const m = status.machines.find((x) => x.machineId === name)!;
        assert.equal(m.currentGeneration, fleet.host(name).systems["v2"]!.path);
      }
      assert.ok(id.startsWith("r-"));
      await page.close();
    }),
  );

  it(
    "a failing canary pauses the rollout live with its reason; the host page shows its switch output",
    { timeout: 3 * LONG },
    () =>
      fleet.explain(async () => {
        const release = await fleet.release("broken", ["web-01", "web-02"]);
        const page = await openPage();
        await signIn(page, deployKey);
        const id = await startRollout(page, release, "web-01, web-02");
        pausedRolloutId = id;
        await page.evaluate("window.__sameDocument = true");
        await waitFor(
          "the rollout to pause on the page",
          async () => (await statusText(page)) === "paused",
          2 * LONG,
          250,
        );
        assert.equal(await page.evaluate("window.__sameDocument === true"), true, "updated without a reload");
        assert.match(await textOf(page.getByTestId("rollout-reason")), /web-01/);
        const canary = await textOf(page.getByTestId("verdicts").locator('tr[data-machine="web-01"]'));
        assert.match(canary, /unhealthy/);
        assert.match(canary, /exit|fail|rolled back/i, "the canary's reason is shown");
        assert.match(
          await textOf(page.getByTestId("verdicts").locator('tr[data-machine="web-02"]')),
          /not started/,
        );
        if (process.env["NIXFLEET_UPDATE_SCREENSHOT"] === "1") {
          await page.screenshot({ path: join(REPO_ROOT, "docs", "dashboard.png"), fullPage: true });
        }

        // The canary's own page: the reason with the tail of its switch output.
        await page.getByTestId("verdicts").getByRole("link", { name: "web-01" }).click();
        const failure = page.getByTestId("last-failure");
        await failure.waitFor({ timeout: LONG });
        assert.match(await textOf(failure), /activation of broken failed \(exit 3\)/);
        assert.match(await textOf(page.getByTestId("history")), /rolled back|quarantined/);
        assert.match(await textOf(page.getByTestId("runs-vs-should")), /out of sync/);
        assert.match(await textOf(page.getByTestId("health-checks")), /generation-healthy/);

        assert.deepEqual(pageErrors, []);
        await page.close();
      }),
  );

  it("a readonly key sees no mutation buttons, and the server refuses a forged one", { timeout: LONG }, () =>
    fleet.explain(async () => {
      assert.ok(pausedRolloutId, "the previous test made a rollout");
      const page = await openPage();
      await signIn(page, readonlyKey);
      assert.match(await textOf(page.getByTestId("who")), /viewer · readonly/);
      await page.goto(`${dashboardUrl}/#/rollouts`);
      await page.getByTestId("rollouts-table").waitFor();
      assert.match(await textOf(page.getByTestId("readonly-notice")), /deploy role/);
      assert.equal(await page.getByRole("button", { name: "Start a rollout…" }).count(), 0);
      await page.goto(`${dashboardUrl}/#/rollouts/${pausedRolloutId}`);
      await page.getByTestId("verdicts").waitFor();
      assert.equal(await page.getByTestId("rollout-actions").count(), 0);
      for (const name of ["Pause", "Resume", "Cancel…"])
        assert.equal(await page.getByRole("button", { name }).count(), 0, `no ${name} button`);

      // Forged: the same call the deploy page makes, sent with this tab's readonly key.
      const forged = (await page.evaluate(`
        fetch("/nixfleet.v1.FleetService/ResumeRollout", {
          method: "POST",
          headers: {
            "content-type": "application/json",
            authorization: "Bearer " + sessionStorage.getItem("nixfleet.apiKey"),
          },
          body: JSON.stringify({ rolloutId: ${JSON.stringify(pausedRolloutId)} }),
        }).then(async (r) => ({ status: r.status, body: await r.json() }))
      `)) as { status: number; body: { code: string; message: string } };
      assert.equal(forged.status, 403);
      assert.equal(forged.body.code, "permission_denied");
      assert.match(forged.body.message, /role readonly; ResumeRollout needs deploy/);
      // Agents' service is not on the dashboard's listener at all.
      const agentCall = (await page.evaluate(`
        fetch("/nixfleet.v1.AgentService/GetDesiredGeneration", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ machineId: "web-01" }),
        }).then((r) => r.status)
      `)) as number;
      assert.equal(agentCall, 404);
      assert.deepEqual(pageErrors, []);
      await page.close();
    }),
  );

  it(
    "cancelling with revert from the page gives the canary its previous generation back",
    { timeout: LONG },
    () =>
      fleet.explain(async () => {
        const page = await openPage();
        await signIn(page, deployKey);
        await page.goto(`${dashboardUrl}/#/rollouts/${pausedRolloutId}`);
        await page.getByTestId("rollout-actions").waitFor();
        assert.equal(
          await page.getByRole("button", { name: "Resume" }).count(),
          1,
          "a paused rollout offers Resume",
        );
        await page.getByRole("button", { name: "Cancel…" }).click();
        assert.equal(await page.getByLabel(/revert the machines/).isChecked(), true, "revert is the default");
        await page.getByRole("button", { name: "Confirm cancel" }).click();
        await waitFor(
          "the rollout to show cancelled",
          async () => (await statusText(page)) === "cancelled",
          LONG,
          200,
        );
        const web01 = (await fleet.status()).machines.find((m) => m.machineId === "web-01")!;
        assert.equal(
          web01.desiredGeneration,
          fleet.host("web-01").systems["v2"]!.path,
          "the revert gave web-01 its previous generation back",
        );
        if (process.env["NIXFLEET_UPDATE_SCREENSHOT"] === "1") {
          await page.goto(`${dashboardUrl}/#/fleet`);
          await page.getByTestId("fleet-table").waitFor();
          await page.screenshot({ path: join(REPO_ROOT, "docs", "dashboard-fleet.png") });
        }
        assert.deepEqual(pageErrors, []);
        await page.close();
      }),
  );

  it(
    "a key revoked while signed in sends the page back to sign-in and forgets the key",
    { timeout: LONG },
    () =>
      fleet.explain(async () => {
        const key = await fleet.createKeyLocally("short-lived", "readonly");
        const page = await openPage();
        await signIn(page, key);
        await page.getByTestId("fleet-table").waitFor();
        await fleet.cliOk(["keys", "revoke", "short-lived"]);
        // The fleet page refreshes on its own; the next refused call signs the tab out.
        await page.getByText("no longer accepts your key").waitFor({ timeout: LONG });
        assert.equal(await page.evaluate("sessionStorage.getItem('nixfleet.apiKey')"), null);
        assert.deepEqual(pageErrors, []);
        await page.close();
      }),
  );
});
