#!/usr/bin/env node
// The radiologist's loop in OHIF 3.13.2 (headless Debian chromium through playwright-core):
// open a study, dismiss the guided tour, pick the Rectangle ROI tool under the "Measurement tools"
// split button, drag a rectangle between two IMAGE points, answer "Track measurements for this
// series?" with Yes, then "Create SR" in the measurements panel, name the report and Save: OHIF
// writes an Enhanced SR (TID 1500; Comprehensive 3D for 3-D measurements) and stores it over STOW-RS.
//
//   node draw.mjs plan.json   (from tests/viewer; tests/test_viewer_draw.py runs it)
//
// plan.json: {
//   "url": "http://127.0.0.1:3000",            viewer served by tests/viewer/serve.mjs
//   "study": "<StudyInstanceUID>",
//   "image": "<SOPInstanceUID or null>",         image to draw on (null: the one shown first)
//   "rect": [x0, y0, x1, y1],                    IMAGE coordinates of two opposite corners (cornerstone /
//                                                DICOM SCOORD convention: (0,0) is the top left corner of
//                                                the top left pixel)
//   "report_name": "samie draw test",            SeriesDescription of the SR OHIF writes
//   "label": "lesion" or null,                   optional label of the measurement (OHIF's "Rename")
//   "out": "/abs/folder",                        screenshots and results.json
//   "chromium": "/usr/bin/chromium"              optional
// }
// Writes <out>/results.json and prints it as the last line of stdout; exit 1 on failure.
import fs from 'node:fs';
import path from 'node:path';
import { dismissTour, launch, logger, scrollTo, waitFor } from './browser.mjs';

const log = logger('draw');

// In the page: image (x, y) points -> page CSS pixels, as drive.mjs's imageGeometry() does.
function imageToPage(points) {
  const cs = window.cornerstone;
  const elements = cs.getEnabledElements();
  const enabled = elements.find((e) => e.viewport.id === 'default') || elements[0];
  const vp = enabled.viewport;
  const imageId = vp.getCurrentImageId();
  const rect = vp.canvas.getBoundingClientRect();
  const plane = cs.metaData.get('imagePlaneModule', imageId);
  return {
    image_id: imageId,
    rows: plane.rows,
    columns: plane.columns,
    viewport: [rect.left, rect.top, rect.width, rect.height],
    points: points.map(([x, y]) => {
      const c = vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, [x, y]));
      return [rect.left + c[0], rect.top + c[1]];
    }),
  };
}

// In the page: the measurement annotations cornerstone holds, with their corners in image coordinates.
function measurementAnnotations() {
  const cs = window.cornerstone;
  return window.cornerstoneTools.annotation.state
    .getAllAnnotations()
    .filter((a) => a.metadata.toolName === 'RectangleROI')
    .map((a) => {
      const imageId = a.metadata.referencedImageId;
      return {
        annotation_uid: a.annotationUID,
        image_id: imageId,
        world: a.data.handles.points,
        image: a.data.handles.points.map((p) => Array.from(cs.utilities.worldToImageCoords(imageId, p))),
        stats: Object.fromEntries(
          Object.entries((a.data.cachedStats && Object.values(a.data.cachedStats)[0]) || {})
            .filter(([k]) => ['area', 'mean', 'max', 'min', 'stdDev', 'areaUnit'].includes(k)),
        ),
        label: a.data.label || null,
      };
    });
}

async function showImage(page, sopInstanceUid) {
  return scrollTo(page, sopInstanceUid, async () => {
    const [x, y, w, h] = (await page.evaluate(imageToPage, [])).viewport;
    return [x + w / 2, y + h / 2];
  });
}

async function shot(page, out, name, shots) {
  const file = path.join(out, `${name}.png`);
  await page.screenshot({ path: file });
  shots.push(path.basename(file));
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf-8'));
  const out = plan.out;
  fs.mkdirSync(out, { recursive: true });
  const profile = fs.mkdtempSync(path.join(plan.profile_root || '/tmp', 'samie-chromium-'));
  const started = Date.now();
  const timings = {};
  const mark = (what) => {
    timings[what] = (Date.now() - started) / 1000;
    log(`${what} (${timings[what]} s)`);
  };
  const browser = await launch(plan, profile);
  const results = { url: plan.url, study: plan.study, rect: plan.rect, errors: [], stow: [], screenshots: [], timings };
  const page = await browser.newPage();
  page.on('pageerror', (err) => results.errors.push(`pageerror: ${err.message.split('\n')[0]}`));
  page.on('console', (message) => {
    if (message.type() === 'error') {
      results.errors.push(`console: ${message.text().split('\n')[0].slice(0, 300)}`);
    }
  });
  // STOW-RS: POST <dicom-web>/studies (OHIF's dicomweb data source, store.dicom).
  const stowDone = new Promise((resolve) => {
    page.on('response', async (response) => {
      const request = response.request();
      if (request.method() === 'POST' && /\/dicom-web\/studies(\/[^/]+)?$/.test(new URL(request.url()).pathname)) {
        let body = null;
        try {
          body = await response.json();
        } catch {
          body = null;
        }
        const record = {
          url: request.url(),
          status: response.status(),
          content_type: request.headers()['content-type'] || null,
          request_bytes: (request.postDataBuffer() || Buffer.alloc(0)).length,
          response: body,
        };
        results.stow.push(record);
        resolve(record);
      }
    });
  });
  try {
    // 1. The study, its first image, the tour.
    await page.goto(`${plan.url}/viewer?StudyInstanceUIDs=${plan.study}`);
    await waitFor(page, () => {
      const cs = window.cornerstone;
      const e = cs && cs.getEnabledElements()[0];
      return Boolean(e && e.viewport.getCurrentImageId && e.viewport.getCurrentImageId() && e.viewport.csImage);
    }, 'the first image');
    mark('image shown');
    results.tour_dismissed = await dismissTour(page, 20_000);
    if (plan.image) {
      await showImage(page, plan.image);
    }
    // The measurements panel opens by itself once tracking starts, which narrows the viewport and
    // moves the image: open it now, so that the image stays where it is while we draw.
    // (The panel's element exists twice in the DOM, once hidden: take the visible one.)
    const panel = page.locator('[data-cy="trackedMeasurements-panel"]:visible').first();
    if (!(await panel.isVisible())) {
      await page.locator('[data-cy="trackedMeasurements-btn"]').click();
      await panel.waitFor({ state: 'visible', timeout: 10_000 });
    }
    await page.waitForTimeout(500); // the viewport resizes with the panel
    mark('ready');
    await shot(page, out, '1-study', results.screenshots);

    // 2. The Rectangle tool: the second item of the "Measurement tools" split button's menu.
    await page.locator('[data-cy="MeasurementTools-split-button-secondary"]').click();
    await page.locator('[role="menuitem"][data-cy="RectangleROI"]').click();
    await waitFor(page, () => {
      const group = window.cornerstoneTools.ToolGroupManager.getToolGroup('default');
      return group && group.getActivePrimaryMouseButtonTool() === 'RectangleROI';
    }, 'RectangleROI to be the active tool', 10_000);
    mark('rectangle tool active');

    // 3. The drag, in small steps as a hand would (cornerstone needs mousemove events between down and up).
    const [x0, y0, x1, y1] = plan.rect;
    const geometry = await page.evaluate(imageToPage, [[x0, y0], [x1, y1], [0, 0], [1, 1]]);
    results.geometry = geometry;
    // Chromium truncates fractional mouse positions to whole CSS pixels: round them ourselves (half a
    // screen pixel of error at most, about 0.2 image pixel for a 256-pixel image in a 700-pixel viewport).
    const [a, b] = geometry.points.map(([x, y]) => [Math.round(x), Math.round(y)]);
    results.mouse = { from: a, to: b };
    await page.mouse.move(a[0], a[1]);
    await page.mouse.down();
    const steps = 12;
    for (let i = 1; i <= steps; i++) {
      await page.mouse.move(a[0] + ((b[0] - a[0]) * i) / steps, a[1] + ((b[1] - a[1]) * i) / steps);
      await page.waitForTimeout(25);
    }
    await page.mouse.up();
    await waitFor(page, () => window.cornerstoneTools.annotation.state
      .getAllAnnotations().some((a) => a.metadata.toolName === 'RectangleROI'), 'the rectangle annotation', 10_000);
    results.annotations = await page.evaluate(measurementAnnotations);
    mark('rectangle drawn');
    await shot(page, out, '2-drawn', results.screenshots);

    // 4. "Track measurements for this series?" -> Yes (absent when the series is tracked already).
    const yes = page.locator('[data-cy="prompt-begin-tracking-yes-btn"]');
    try {
      await yes.waitFor({ state: 'visible', timeout: 15_000 });
      await yes.click();
      results.tracking_prompt = 'yes';
    } catch {
      results.tracking_prompt = 'not shown';
    }
    await page.locator('[data-cy="measurement-table-row-0"]:visible').first().waitFor({ state: 'visible', timeout: 15_000 });
    mark('measurement tracked');

    // 5. Optional label: the measurement row's "..." menu -> Rename; a dialog with one text field.
    if (plan.label) {
      await page.locator('[data-cy="measurement-table-row-0"] [data-cy="data-row"]').hover();
      await page.locator('[data-cy="measurement-table-row-0"] svg').last().click();
      await page.getByRole('menuitem', { name: 'Rename' }).click();
      const input = page.locator('[role="dialog"] input').first();
      await input.waitFor({ state: 'visible', timeout: 10_000 });
      await input.fill(plan.label);
      await input.press('Enter');
      await page.locator('[data-cy="data-row-title"]', { hasText: plan.label }).waitFor({ timeout: 10_000 });
      mark('measurement labelled');
    }
    results.annotations = await page.evaluate(measurementAnnotations);
    await shot(page, out, '3-tracked', results.screenshots);

    // 6. "Create SR" (the panel's button; OHIF's dialog is titled "Create Report"): Series "Create new
    // series" (default), Report name, Save. Save stores over STOW-RS; Download would save a file.
    await page.getByRole('button', { name: 'Create SR', exact: true }).click();
    const dialog = page.locator('[role="dialog"]', { hasText: 'Create Report' });
    await dialog.waitFor({ state: 'visible', timeout: 15_000 });
    results.dialog_series_choice = (await dialog.locator('[role="combobox"]').first().textContent())?.trim() || null;
    await dialog.locator('[data-cy="dialog-input"]').fill(plan.report_name || 'samie draw test');
    await shot(page, out, '4-create-report', results.screenshots);
    await dialog.locator('[data-cy="input-dialog-save-button"] button, button:has-text("Save")').first().click();
    mark('report saved (clicked)');
    const stow = await Promise.race([
      stowDone,
      new Promise((_, reject) => setTimeout(() => reject(new Error('no STOW-RS request within 60 s')), 60_000)),
    ]);
    mark(`STOW-RS answered ${stow.status}`);
    if (stow.status < 200 || stow.status >= 300) {
      throw new Error(`STOW-RS failed with HTTP ${stow.status}`);
    }
    // OHIF then loads the new SR into the viewport (its thumbnail appears in the study browser).
    // It also asks "Do you want to continue tracking measurements for this study?" (Yes / No): left
    // unanswered here (it does not matter to the stored SR); results.after_save_prompt says if it came.
    const again = page.getByText('continue tracking measurements', { exact: false });
    results.after_save_prompt = await again.waitFor({ state: 'visible', timeout: 5_000 }).then(() => true, () => false);
    await page.waitForTimeout(1000);
    await page.mouse.move(20, (plan.viewport || { height: 800 }).height - 5);
    await shot(page, out, '5-saved', results.screenshots);
    results.notifications = await page.evaluate(() =>
      Array.from(document.querySelectorAll('[data-sonner-toast], .sonner-toast, [role="status"], li[data-type]'))
        .map((n) => n.textContent.trim())
        .filter(Boolean),
    );
  } catch (err) {
    results.failure = err.message;
    await page.screenshot({ path: path.join(out, 'failed.png') }).catch(() => {});
    log(`FAILED ${err.message}`);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  results.seconds = (Date.now() - started) / 1000;
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify(results, null, 2));
  process.stdout.write(`${JSON.stringify(results)}\n`);
  process.exit(results.failure ? 1 : 0);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
