// Opens the page in headless Chromium (Debian's, via playwright-core) and prints what it found as JSON:
//   node test/run.mjs "http://127.0.0.1:PORT/examples/web/index.html?bundle=...&photos=..."
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => window.edgePersrepResults !== undefined, null, { timeout: 240_000 });
  const results = await page.evaluate(() => window.edgePersrepResults);
  await page.screenshot({ path: process.argv[3] || "/dev/null", fullPage: true });
  console.log(JSON.stringify({ results, console: console_ }));
} finally {
  await browser.close();
}
