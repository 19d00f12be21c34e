// Opens the ComfyUI editor in headless Chromium, loads each shipped UI workflow and reports missing
// node types, then exercises the FlowDiT widgets. Usage:
//   node check_workflows.cjs <server url> <screenshot dir> <workflow.json>...
// Prints one JSON object; playwright-core is found through NODE_PATH.
const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");

async function main() {
  const [url, shotDir, ...files] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
  // Extensions load asynchronously after the app: wait for ours.
  await page.waitForFunction(() => window.app.extensions?.some((e) => e.name === "FlowDiT.widgets"), null, { timeout: 60000 });
  // Close the first-run template browser so the screenshots show the canvas.
  await page.keyboard.press("Escape");
  await page.waitForTimeout(500);
  const result = { workflows: {}, consoleErrors };
  for (const file of files) {
    const wf = JSON.parse(fs.readFileSync(file, "utf8"));
    const name = path.basename(file, ".json");
    const report = await page.evaluate(async (wf) => {
      await window.app.loadGraphData(wf);
      const registered = window.LiteGraph.registered_node_types;
      const missing = wf.nodes.map((n) => n.type).filter((t) => !registered[t]);
      const nodes = window.app.graph._nodes || window.app.graph.nodes;
      return { missing, loaded: nodes.length, expected: wf.nodes.length };
    }, wf);
    await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(shotDir, `${name}.png`) });
    result.workflows[name] = report;
  }
  // Widget behaviour: snapping on the latent node, the curve on the scheduler node.
  result.widgets = await page.evaluate(() => {
    const latent = window.LiteGraph.createNode("FlowDiTEmptyVideoLatent");
    window.app.graph.add(latent);
    const w = (n, name) => n.widgets.find((x) => x.name === name);
    w(latent, "length").callback(80);
    w(latent, "width").callback(830);
    const sched = window.LiteGraph.createNode("FlowDiTScheduler");
    window.app.graph.add(sched);
    return { length: w(latent, "length").value, width: w(latent, "width").value,
             schedulerDraws: typeof sched.onDrawForeground === "function",
             schedulerHeight: sched.size[1] };
  });
  await page.screenshot({ path: path.join(shotDir, "widgets.png") });
  console.log(JSON.stringify(result));
  await browser.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
