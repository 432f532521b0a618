// End-to-end check of the graftdb map page in Debian's headless chromium (playwright-core,
// no browser download): load the page, see the database's imagery as the basemap, draw a
// box, run a text query, and see result features on the map and in the list.
//
// Usage: node e2e.mjs URL SCREENSHOT.png [QUERY]
// Prints one JSON line of what it saw; exits 1 (with the reason on stderr) when a step fails.
import { chromium } from 'playwright-core';

const [url, shot, query = 'a lake'] = process.argv.slice(2);
if (!url || !shot) {
  console.error('usage: node e2e.mjs URL SCREENSHOT.png [QUERY]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // No internet here: nothing may phone home.
  args: ['--headless', '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--no-first-run', '--no-default-browser-check', '--disable-gpu', '--no-sandbox', '--disable-dev-shm-usage'],
});
const seen = { step: 'launch', requests_outside: [], console_errors: [] };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const origin = new URL(url).origin;
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) seen.requests_outside.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') seen.console_errors.push(m.text()); });
  page.on('pageerror', (e) => seen.console_errors.push(String(e)));
  page.setDefaultTimeout(20000);

  seen.step = 'load';
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.graftdb && /tiles/.test(document.getElementById('status').textContent));
  // The basemap: image overlays of the database's own tiles, decoded.
  await page.waitForFunction(() => [...document.querySelectorAll('img.leaflet-image-layer')].some((i) => i.complete && i.naturalWidth > 0));
  seen.basemap_images = await page.evaluate(() => [...document.querySelectorAll('img.leaflet-image-layer')].filter((i) => i.naturalWidth > 0).length);

  seen.step = 'draw';
  // Draw a box over the middle of the map with the rectangle tool.
  await page.click('.leaflet-draw-draw-rectangle');
  const box = await page.locator('#map').boundingBox();
  const [x0, y0, x1, y1] = [box.x + box.width * 0.2, box.y + box.height * 0.2, box.x + box.width * 0.8, box.y + box.height * 0.8];
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  await page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, { steps: 5 });
  await page.mouse.move(x1, y1, { steps: 5 });
  await page.mouse.up();
  await page.waitForFunction(() => window.graftdb.drawnCount() === 1);

  seen.step = 'query';
  await page.fill('#q', query);
  await page.fill('#k', '8');
  await page.click('#run');
  await page.waitForFunction(() => /results \(|error/.test(document.getElementById('status').textContent + ' ' + document.getElementById('status').className));
  const status = await page.textContent('#status');
  seen.status = status;
  if (!(await page.locator('#results li.hit').count())) throw new Error(`no results listed (status: ${status})`);
  seen.list_items = await page.locator('#results li.hit').count();
  seen.map_features = await page.locator('path.graft-hit').count();
  seen.request = await page.evaluate(() => window.graftdb.lastRequest);
  seen.result_features = await page.evaluate(() => window.graftdb.lastResult ? window.graftdb.lastResult.features.length : 0);

  await page.screenshot({ path: shot });
  await page.evaluate(() => { const m = window.graftdb.map; m.__first_center = m.getCenter(); m.__first_zoom = m.getZoom(); });
  seen.step = 'click-through';
  // Click-through: the first list item opens a popup whose link is the tile image.
  await page.click('#results li.hit');
  await page.waitForSelector('.leaflet-popup .popup');
  seen.popup_link = await page.getAttribute('.leaflet-popup .popup a', 'href');

  // A polygon instead of the box: back to the first view (no animation, popup closed),
  // four clicks, then the toolbar's Finish.
  seen.step = 'polygon';
  await page.click('#clear-area');
  await page.evaluate(() => { const m = window.graftdb.map; m.closePopup(); m.setView(m.__first_center || m.getCenter(), m.__first_zoom || m.getZoom(), { animate: false }); });
  await page.click('.leaflet-draw-draw-polygon');
  for (const [fx, fy] of [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]) {
    await page.mouse.move(box.x + box.width * fx, box.y + box.height * fy, { steps: 3 });
    await page.mouse.down();
    await page.mouse.up();
    await page.waitForTimeout(300);
  }
  await page.click('.leaflet-draw-actions a[title="Finish drawing"]');
  await page.waitForFunction(() => window.graftdb.drawnCount() === 1);
  await page.click('#run');
  await page.waitForFunction(() => window.graftdb.lastRequest.polygon && /results \(|error/.test(document.getElementById('status').textContent));
  seen.polygon_status = await page.textContent('#status');
  seen.polygon_type = await page.evaluate(() => window.graftdb.lastRequest.polygon.type);
  seen.polygon_items = await page.locator('#results li.hit').count();

  // Patch level: patch footprints and the heat layer.
  seen.step = 'patch';
  await page.selectOption('#level', 'patch');
  await page.click('#run');
  await page.waitForFunction(() => window.graftdb.lastRequest.level === 'patch' && /results \(|error/.test(document.getElementById('status').textContent));
  seen.patch_status = await page.textContent('#status');
  seen.patch_items = await page.locator('#results li.hit').count();
  seen.heat_layer = await page.locator('canvas.leaflet-heatmap-layer').count();
  console.log(JSON.stringify(seen));
  const fail = [];
  if (!(seen.list_items > 0)) fail.push(`no results listed (status: ${status})`);
  if (!(seen.map_features > 0)) fail.push('no result features drawn on the map');
  if (seen.polygon_type !== 'Polygon' || !(seen.polygon_items > 0)) fail.push(`polygon: ${seen.polygon_type}, ${seen.polygon_items} results (${seen.polygon_status})`);
  if (!(seen.patch_items > 0) || seen.heat_layer !== 1) fail.push(`patch level: ${seen.patch_items} results, ${seen.heat_layer} heat layers (${seen.patch_status})`);
  if (!seen.request || !Array.isArray(seen.request.bbox)) fail.push('the query did not carry the drawn bbox');
  if (seen.requests_outside.length) fail.push(`requests left the server: ${seen.requests_outside.join(', ')}`);
  if (seen.console_errors.length) fail.push(`console errors: ${seen.console_errors.join(' | ')}`);
  if (fail.length) { console.error(fail.join('\n')); process.exitCode = 1; }
} catch (e) {
  console.error(`e2e: at step ${seen.step}: ${e.message}`);
  if (page) await page.screenshot({ path: shot }).catch(() => {});
  console.log(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  await browser.close();
}
