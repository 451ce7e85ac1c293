// The web UI in a real browser against a running gateway (tests/test_web_ui.py starts the stack and
// runs this). Debian's Chromium through playwright-core; no browser is downloaded.
//
// Environment: LLMGW_UI (ui-api's URL), LLMGW_TOKEN (the admin token), LLMGW_HELPER (the Python test's
// helper: it sends requests through the edge with the openai SDK and reads the running config),
// LLMGW_SHOTS (where the screenshots go), CHROMIUM (default /usr/bin/chromium).
//
// Prints one line per step ("ok <step> <ms>"); exits 1 at the first failure, with a screenshot of the
// page as it was (failure.png in LLMGW_ARTIFACTS, default LLMGW_SHOTS).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const UI = process.env.LLMGW_UI;
const TOKEN = process.env.LLMGW_TOKEN;
const READONLY_TOKEN = process.env.LLMGW_READONLY_TOKEN; // optional: the read-only role's view
const HELPER = process.env.LLMGW_HELPER;
const SHOTS = process.env.LLMGW_SHOTS;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.LLMGW_ARTIFACTS || SHOTS;
if (!UI || !TOKEN || !HELPER || !SHOTS) {
  console.error("LLMGW_UI, LLMGW_TOKEN, LLMGW_HELPER and LLMGW_SHOTS are needed");
  process.exit(2);
}
mkdirSync(SHOTS, { recursive: true });

const WIDE = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

async function helper(path, body) {
  const response = await fetch(HELPER + path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`helper ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ viewport: WIDE, colorScheme: "light", reducedMotion: "reduce" });
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("dialog", (d) => d.accept());
page.setDefaultTimeout(10_000);

let stepStart = Date.now();
async function step(name, fn) {
  stepStart = Date.now();
  await fn();
  console.log(`ok ${name} ${Date.now() - stepStart}ms`);
}

async function shot(name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(150); // let the last transition settle
  // the page as it stands, without the passing notifications
  await page.evaluate(() => document.querySelector(".toasts")?.setAttribute("style", "visibility: hidden"));
  await page.screenshot({ path: join(SHOTS, name) });
  await page.evaluate(() => document.querySelector(".toasts")?.removeAttribute("style"));
}

async function go(label) {
  await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: label, exact: true }).click();
}

const numberAt = (selector, attribute) =>
  page.locator(selector).first().getAttribute(attribute).then((v) => Number(v ?? "NaN"));

try {
  await step("login", async () => {
    await page.goto(UI + "/");
    await page.getByLabel("Admin token").fill("not-the-token-" + "x".repeat(20));
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByText("That token is not valid.").waitFor();
    await page.getByLabel("Admin token").fill(TOKEN);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    // the cookie is HttpOnly: the page cannot read it
    check((await page.evaluate(() => document.cookie)) === "", "the session cookie is readable from the page");
  });

  await step("overview-live", async () => {
    const bar = '[data-testid="usage-alpha-minute-requests"]';
    const spark = '[data-testid="spark-alpha"]';
    await page.locator(bar).waitFor();
    await page.locator(".live.mode-live").waitFor({ timeout: 10_000 }); // the SSE stream is delivering
    await page.waitForTimeout(1600); // a sparkline read after the last one settled
    const before = await numberAt(bar, "data-value");
    const sparkBefore = await numberAt(spark, "data-total");
    const sent = await helper("/send", { model: "m", n: 3 });
    check(sent.statuses.every((s) => s === 200), `requests failed: ${JSON.stringify(sent)}`);
    check(sent.providers.every((p) => p === "alpha"), `not served by alpha: ${JSON.stringify(sent)}`);
    const t0 = Date.now();
    await page.waitForFunction(([sel, n]) => Number(document.querySelector(sel)?.getAttribute("data-value")) >= n,
                               [bar, before + 3], { timeout: 2000, polling: 50 });
    const barMs = Date.now() - t0;
    await page.waitForFunction(([sel, n]) => Number(document.querySelector(sel)?.getAttribute("data-total")) >= n,
                               [spark, sparkBefore + 3], { timeout: Math.max(100, 2000 - (Date.now() - t0)), polling: 50 });
    const sparkMs = Date.now() - t0;
    console.log(`   bar +3 after ${barMs}ms, sparkline +3 after ${sparkMs}ms`);
    check((await page.locator(bar).getAttribute("data-level")) === "ok", "alpha's requests bar is not green");
    await helper("/send", { model: "m", n: 2, provider: "beta" }); // some paid usage for the picture
    await page.waitForFunction((sel) => Number(document.querySelector(sel)?.getAttribute("data-value")) >= 2,
                               '[data-testid="usage-beta-minute-requests"]', { timeout: 3000, polling: 100 });
    await page.waitForTimeout(1200);
  });

  await step("overview-beyond-the-hour", async () => {
    // a model without any limit takes one line: its numbers, no striped bars
    const unlimited = page.locator('[data-provider="alpha"] .model-row[data-model="m"]');
    check((await unlimited.locator(".bar").count()) === 0, "alpha/m has no limit but shows bars");
    const height = (await unlimited.boundingBox())?.height ?? 999;
    check(height < 60, `alpha/m (no limits) takes ${height}px, not one line`);
    // the toggles are real buttons: focusable, pressed state, named for a screen reader
    const requests = page.getByRole("button", { name: "Sparkline metric: Requests" });
    check((await requests.getAttribute("aria-pressed")) === "true", "Requests is not pressed");
    await requests.focus();
    await page.keyboard.press("Tab");
    check((await page.evaluate(() => document.activeElement?.getAttribute("aria-label"))) === "Sparkline metric: Tokens",
          "Tab from Requests does not reach Tokens");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.querySelector('[aria-label="Sparkline metric: Tokens"]')?.getAttribute("aria-pressed") === "true");
    await page.getByRole("button", { name: "Sparkline metric: Requests" }).click();
    // the sparkline over 7 days (3-hour buckets from ClickHouse) holds the requests just sent
    await page.getByRole("button", { name: "Sparkline span: 7 d" }).click();
    await page.waitForFunction((sel) => (document.querySelector(sel)?.getAttribute("data-points") ?? "").split(",").length === 56
      && Number(document.querySelector(sel)?.getAttribute("data-total")) >= 3, '[data-testid="spark-alpha"]', { timeout: 5000 });
    await page.getByRole("button", { name: "Sparkline span: 10 min" }).click();
    // errors and latency per provider and model, 24 h and 7 d from ClickHouse
    const week = page.getByRole("button", { name: "Errors and latency over the last: 7 d" });
    await week.click();
    check((await week.getAttribute("aria-pressed")) === "true", "the 7 d range is not pressed");
    await page.locator('[data-testid="stats-table"][data-range="7d"]').waitFor();
    const alpha = page.locator('[data-testid="stats-row"][data-name="alpha"]');
    await alpha.waitFor({ timeout: 10_000 });
    await page.locator('[data-testid="stats-row"][data-name="alpha/m"]').waitFor();
    check(/\d+ ms/.test(await alpha.locator("td").nth(5).textContent()), "alpha has no p50 latency");
    await page.getByRole("button", { name: "Errors and latency over the last: 24 h" }).click();
    await page.locator('[data-testid="stats-table"][data-range="24h"]').waitFor();
    await page.locator('[data-testid="stats-row"][data-name="beta/m"]').waitFor();
    // prompt caching over the same range: beta read part of each prompt from its cache, alpha nothing
    const cached = page.locator('[data-testid="cache-row"][data-name="beta/m"]');
    await cached.waitFor();
    check(Number(await cached.getAttribute("data-hit-rate")) > 0 && Number(await cached.getAttribute("data-saved")) > 0,
          "beta/m shows no cache hits or savings");
    check(Number(await page.locator('[data-testid="cache-row"][data-name="alpha"]').getAttribute("data-hit-rate")) === 0,
          "alpha shows cache hits it never had");
    await shot("overview.png");
  });

  await step("pin", async () => {
    await go("Providers");
    await page.getByRole("button", { name: "Pin beta" }).click();
    await page.getByTestId("pinned").filter({ hasText: "pinned to beta" }).waitFor();
    const sent = await helper("/send", { model: "m", n: 1 });
    check(sent.providers[0] === "beta", `the pinned provider did not serve: ${JSON.stringify(sent)}`);
    await page.getByRole("button", { name: "Unpin beta" }).waitFor();
  });

  await step("compare", async () => {
    const targets = page.getByRole("group", { name: /Targets/ });
    for (const t of ["alpha/m", "beta/m"]) {
      const box = targets.getByRole("checkbox", { name: t });
      if (!(await box.isChecked())) await box.check();
    }
    await page.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator("article.result").first().waitFor({ timeout: 15_000 });
    check((await page.locator("article.result").count()) >= 2, "compare: fewer than two results");
    await shot("providers.png");
    await page.getByRole("button", { name: "Unpin beta" }).click();
    await page.getByTestId("pinned").filter({ hasText: "automatic" }).waitFor();
  });

  await step("config-add-model", async () => {
    await go("Config");
    const editor = page.getByTestId("config-text");
    await editor.waitFor();
    await page.getByTestId("config-status").filter({ hasText: "valid" }).waitFor();
    const text = await editor.inputValue();
    check(text.includes("# the web UI test adds a model here"), "the config has no marker line");
    const failing = await helper("/send", { model: "brand-new", n: 1 });
    check(failing.statuses[0] === 404, `brand-new answered before it was configured: ${JSON.stringify(failing)}`);
    await editor.fill(text.replace("# the web UI test adds a model here", "- name: brand-new"));
    await page.getByTestId("config-diff").filter({ hasText: "+      - name: brand-new" }).waitFor();
    await page.getByTestId("config-status").filter({ hasText: "valid" }).waitFor();
    await page.getByTestId("config-save").click();
    const savedToast = page.getByText(/Saved( as version [^:]+)?: every service applies it now/);
    await savedToast.waitFor();
    const savedAs = /as version (\d+)/.exec(await savedToast.first().textContent())?.[1];
    check(savedAs !== undefined, "the save did not say which revision it wrote");
    const served = await helper("/wait-model", { model: "brand-new", timeout_s: 10 });
    check(served.ok && served.provider === "beta", `brand-new not served after the save: ${JSON.stringify(served)}`);
    console.log(`   brand-new served ${served.after_ms}ms after the save, no restart`);
    // every process reports the saved revision (the page asks again a second after the save)
    await page.getByTestId("config-replicas")
      .filter({ hasText: new RegExp(`^\\s*all on the latest\\s+All \\d+ processes run revision ${savedAs}, the latest\\.\\s*$`) })
      .waitFor({ timeout: 15000 });
  });

  await step("config-invalid", async () => {
    const before = await helper("/config-file");
    const editor = page.getByTestId("config-text");
    const text = await editor.inputValue();
    check(text.includes("requests_per_minute: 30"), "beta's limit line is missing");
    await editor.fill(text.replace("requests_per_minute: 30", "requests_per_minute: -5"));
    const problems = page.getByTestId("config-problems");
    await problems.filter({ hasText: "requests_per_minute" }).waitFor();
    await page.getByTestId("config-status").filter({ hasText: "problem" }).waitFor();
    await problems.getByRole("button", { name: /^line \d+$/ }).first().waitFor();
    await page.getByTestId("config-save").click();
    await page.getByTestId("config-error").filter({ hasText: "unchanged" }).waitFor();
    const after = await helper("/config-file");
    check(after.sha256 === before.sha256 && after.revision === before.revision, "the invalid config changed the running config");
    await shot("config-editor.png");
    await page.getByRole("button", { name: "Revert" }).click();
  });

  await step("request-log", async () => {
    await go("Request log");
    await page.getByTestId("log-row").first().waitFor();
    check(new Set(await page.getByTestId("log-row").evaluateAll((rows) => rows.map((r) => r.dataset.model))).size >= 2,
          "the unfiltered log shows one model only");
    await page.getByLabel("Model").fill("brand-new");
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="log-row"]')];
      return rows.length > 0 && rows.every((r) => r.dataset.model === "brand-new");
    }, null, { timeout: 5000, polling: 100 });
    await page.getByLabel("Model").fill("");
    await page.getByLabel("Provider").selectOption("alpha");
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="log-row"]')];
      return rows.length >= 3 && rows.every((r) => r.dataset.provider === "alpha");
    }, null, { timeout: 5000, polling: 100 });
    await page.getByTestId("log-row").first().click();
    await page.getByRole("complementary", { name: /^Request / }).getByText("Route reason").waitFor();
    await shot("request-log.png");
  });

  await step("pricing", async () => {
    await go("Pricing");
    await page.getByRole("table", { name: "Effective prices" }).waitFor();
    // which price table is in use and as of when, in words, never the fetch's raw error
    const table = (await page.getByTestId("price-table").textContent()) ?? "";
    check(/bundled snapshot of \d{4}-\d{2}-\d{2}|cached copy fetched \d{4}-|public price list, fetched/.test(table),
          `the pricing page does not say which price table it uses: ${table}`);
    check(!/Error|Errno/.test(table), `the pricing page shows a raw fetch error: ${table}`);
    const link = page.getByRole("link", { name: /Usage/ });
    check((await link.getAttribute("href")) === "http://localhost:3000/d/llmgw-usage", "the Grafana link is wrong");
    await shot("pricing.png");
  });

  // last: once a key exists the gateway wants one from every client
  await step("keys", async () => {
    await go("Keys");
    await page.getByLabel("Name").fill("team-a");
    await page.getByLabel("Budget / month (USD)").fill("50");
    await page.getByLabel("Requests / minute").fill("60");
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = await page.getByTestId("key-secret").textContent();
    check(/^llmgw-/.test(secret ?? ""), `no secret shown: ${secret}`);
    const sent = await helper("/send", { model: "m", n: 2, provider: "beta", key: secret });
    check(sent.statuses.every((s) => s === 200), `requests with the key failed: ${JSON.stringify(sent)}`);
    const row = page.getByRole("row").filter({ hasText: "team-a" });
    check(!(await row.textContent()).includes("……"), "the key's prefix ends in a double ellipsis");
    // its month day by day against its budget, once the requests reached ClickHouse
    const chart = page.getByTestId("spend-chart");
    for (let i = 0; i < 40; i++) {
      await row.getByRole("button", { name: "Usage" }).click(); // open (or close and open again: a fresh read)
      if (await row.getByRole("button", { name: "Usage" }).getAttribute("aria-expanded") !== "true") continue;
      await page.getByText(/month \d{4}-\d{2}/).waitFor();
      await chart.waitFor();
      if (Number(await chart.getAttribute("data-requests")) >= 2) break; // both requests in ClickHouse
      await page.waitForTimeout(250);
    }
    check(Number(await chart.getAttribute("data-requests")) >= 2, "the key's spend per day stays empty");
    check(Number(await chart.getAttribute("data-total")) > 0, "the key's requests cost nothing per day");
    check(Number(await chart.getAttribute("data-days")) >= 28, "the chart does not hold the whole month");
    check((await chart.getAttribute("aria-label")).includes("$50.00 budget"), "the chart does not name the budget");
    await shot("keys.png");
    // the request log names the key
    await go("Request log");
    await page.locator('[data-testid="log-key"]').filter({ hasText: "team-a" }).first().waitFor({ timeout: 10_000 });
  });

  await step("phone", async () => {
    await page.setViewportSize(PHONE);
    await page.emulateMedia({ colorScheme: "dark" });
    await go("Overview");
    await page.locator('[data-testid="usage-alpha-minute-requests"]').waitFor();
    await page.waitForTimeout(1200);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the overview is ${overflow}px wider than a phone`);
    await shot("overview-phone.png");
    // every page link whole on the screen (none scrolled half out of sight: "Co")
    const links = await page.getByRole("navigation", { name: "Pages" }).getByRole("link").evaluateAll((all) =>
      all.map((a) => { const r = a.getBoundingClientRect(); return { text: a.textContent, left: r.left, right: r.right }; }));
    for (const l of links) check(l.left >= 0 && l.right <= 391, `the page link ${l.text} is cut off (${l.left}..${l.right})`);
    // the request log: no column cut off; a wide table scrolls inside its own box
    await go("Request log");
    await page.getByTestId("log-row").first().waitFor();
    const fit = await page.evaluate(() => {
      const wrap = document.querySelector('table[aria-label="Requests"]').closest(".table-wrap");
      wrap.scrollLeft = wrap.scrollWidth;
      const heads = [...wrap.querySelectorAll("thead th")].filter((th) => th.offsetParent !== null);
      const last = heads.at(-1).getBoundingClientRect();
      return { page: document.documentElement.scrollWidth - window.innerWidth, right: last.right, wrapRight: wrap.getBoundingClientRect().right };
    });
    check(fit.page <= 1, `the request log is ${fit.page}px wider than a phone`);
    check(fit.right <= fit.wrapRight + 1, `the request log's last column ends at ${fit.right}px, its box at ${fit.wrapRight}px`);
    await page.evaluate(() => { document.querySelector('table[aria-label="Requests"]').closest(".table-wrap").scrollLeft = 0; });
    await shot("request-log-phone.png");
    await go("Keys");
    await page.getByRole("row").filter({ hasText: "team-a" }).first().waitFor();
    const keysOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(keysOverflow <= 1, `the keys page is ${keysOverflow}px wider than a phone`);
    const revoke = await page.getByRole("row").filter({ hasText: "team-a" }).first().getByRole("button", { name: "Revoke" }).boundingBox();
    check(revoke && revoke.x + revoke.width <= 391, `the key's Revoke button is cut off at ${revoke?.x + revoke?.width}px`);
    await shot("keys-phone.png");
  });

  await step("keyboard", async () => {
    await page.setViewportSize(WIDE);
    await page.goto(UI + "/overview");
    // the page drawn (its heading and the navigation) before any key is pressed: on a busy machine the
    // first Tab could otherwise land before the links exist
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: "Request log" }).waitFor();
    await page.keyboard.press("Tab"); // the skip link first
    check((await page.evaluate(() => document.activeElement?.textContent)) === "Skip to content", "no skip link");
    for (let i = 0; i < 3; i++) await page.keyboard.press("Tab");
    await page.keyboard.press("Enter"); // Overview, Providers, Request log: the third page link
    await page.getByRole("heading", { name: "Request log" }).waitFor();
  });

  if (READONLY_TOKEN) {
    await step("read-only", async () => {
      const viewer = await browser.newContext({ viewport: WIDE });
      const view = await viewer.newPage();
      view.setDefaultTimeout(10_000);
      await view.goto(UI + "/providers");
      await view.getByLabel("Admin token").fill(READONLY_TOKEN);
      await view.getByRole("button", { name: "Log in" }).click();
      await view.getByText("read-only", { exact: true }).waitFor();
      await view.getByRole("heading", { name: "Providers" }).waitFor(); // back where the login began
      check(await view.getByRole("button", { name: "Pin alpha" }).isDisabled(), "the read-only role may pin");
      await view.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: "Config" }).click();
      await view.getByTestId("config-text").waitFor();
      check(await view.getByTestId("config-save").isDisabled(), "the read-only role may save the config");
      await view.getByRole("button", { name: "Log out" }).click();
      await view.getByLabel("Admin token").waitFor();
      await viewer.close();
    });
  }

  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
} catch (error) {
  console.error(`FAILED after ${Date.now() - stepStart}ms: ${error?.stack ?? error}`);
  await page.screenshot({ path: join(ARTIFACTS, "failure.png") }).catch(() => undefined);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log("browser suite passed");
