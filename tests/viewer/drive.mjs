#!/usr/bin/env node
// Drives the OHIF viewer in Debian's chromium (headless, through playwright-core) as a radiologist
// would: open a study, dismiss the guided tour, go to a given image, double-click the SEG thumbnail
// and confirm loading it, then double-click the SR thumbnail. Screenshots are written at each step,
// with what the page says about where the image lies on the screen (from cornerstone), so the caller
// can check the overlay's pixels against the mask it expects.
//
//   node drive.mjs plan.json
//
// plan.json: {"url": "http://127.0.0.1:3000", "out": "/abs/folder", "chromium": "/usr/bin/chromium",
//   "views": [{"name": "ct", "study": "<StudyInstanceUID>", "image": "<SOPInstanceUID or null>",
//              "seg": "<SEG series description or null>", "sr": "<SR series description or null>",
//              "seg_series": "<SeriesInstanceUID of the SEG, optional>"}]}
// seg_series picks the SEG's thumbnail by its series where several SEG series share a description (the
// node's prompted SEGs, one series per report answered).
// Writes <out>/results.json and prints it as the last line of stdout.
import fs from 'node:fs';
import path from 'node:path';
import { STEP_TIMEOUT_MS, dismissTour, launch, logger, scrollTo, viewportState, waitFor } from './browser.mjs';

const log = logger('drive');

// Where the displayed image lies on the page: the screen position of three image corners, in CSS
// pixels (image coordinates as in cornerstone and DICOM SCOORD: (0, 0) is the top left corner of the
// top left pixel, (columns, rows) the bottom right corner of the bottom right pixel).
function imageGeometry() {
  const cs = window.cornerstone;
  const elements = cs.getEnabledElements();
  const enabled = elements.find((e) => e.viewport.id === 'default') || elements[0];
  const vp = enabled.viewport;
  const imageId = vp.getCurrentImageId();
  const plane = cs.metaData.get('imagePlaneModule', imageId);
  const rect = vp.canvas.getBoundingClientRect();
  const toScreen = (x, y) => {
    const c = vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, [x, y]));
    return [rect.left + c[0], rect.top + c[1]];
  };
  const match = /\/instances\/([0-9.]+)\/frames\/(\d+)/.exec(imageId) || [];
  return {
    image_id: imageId,
    sop_instance_uid: match[1] || null,
    frame_number: match[2] ? Number(match[2]) : null,
    rows: plane.rows,
    columns: plane.columns,
    viewport: [rect.left, rect.top, rect.width, rect.height],
    origin: toScreen(0, 0),
    column_end: toScreen(plane.columns, 0),
    row_end: toScreen(0, plane.rows),
    device_pixel_ratio: window.devicePixelRatio,
  };
}

async function viewportBox(page) {
  const geometry = await page.evaluate(imageGeometry);
  const [x, y, width, height] = geometry.viewport;
  return { x, y, width, height, cx: x + width / 2, cy: y + height / 2 };
}

// Screenshots of the viewport taken until two in a row are identical: rendering has settled.
async function waitStable(page, what) {
  const box = await viewportBox(page);
  const clip = { x: box.x, y: box.y, width: box.width, height: box.height };
  let previous = null;
  for (let i = 0; i < 40; i++) {
    const shot = await page.screenshot({ clip });
    if (previous && shot.equals(previous)) {
      return;
    }
    previous = shot;
    await page.waitForTimeout(400);
  }
  log(`${what}: the viewport kept changing; going on`);
}

async function parkMouse(page) {
  // Bottom of the (empty) study browser: no hover effect on the viewport or the toolbar.
  const size = page.viewportSize();
  await page.mouse.move(20, size.height - 5);
}

async function showImage(page, sopInstanceUid) {
  return scrollTo(page, sopInstanceUid, async () => {
    const box = await viewportBox(page);
    return [box.cx, box.cy];
  });
}

async function openStudy(page, url, view, first) {
  await page.goto(`${url}/viewer?StudyInstanceUIDs=${view.study}`);
  await waitFor(page, () => {
    const cs = window.cornerstone;
    const e = cs && cs.getEnabledElements()[0];
    return Boolean(e && e.viewport.getCurrentImageId && e.viewport.getCurrentImageId() && e.viewport.csImage);
  }, 'the first image');
  const dismissed = await dismissTour(page, first ? 20_000 : 1_500);
  if (view.image) {
    await showImage(page, view.image);
  }
  await parkMouse(page);
  await waitStable(page, 'image');
  return dismissed;
}

// The study browser's thumbnail of a SEG: by its description, or by its series (OHIF names a thumbnail's
// element "thumbnail-<displaySetInstanceUID>").
async function segThumbnail(page, description, seriesUid) {
  if (!seriesUid) {
    return page.getByText(description, { exact: true });
  }
  const find = (series) => {
    const services = window.services;
    const shown = services ? services.displaySetService.getActiveDisplaySets() : [];
    const found = shown.find((d) => d.SeriesInstanceUID === series);
    return found ? found.displaySetInstanceUID : null;
  };
  await waitFor(page, find, `the display set of series ${seriesUid}`, STEP_TIMEOUT_MS, seriesUid);
  return page.locator(`[id="thumbnail-${await page.evaluate(find, seriesUid)}"]`);
}

async function loadSeg(page, description, shot, seriesUid) {
  const before = `${shot}-1-before.png`;
  await page.screenshot({ path: before });
  const geometryBefore = await page.evaluate(imageGeometry);
  await (await segThumbnail(page, description, seriesUid)).dblclick();
  // OHIF previews the SEG and asks before it loads ("hydrates") it.
  const yes = page.getByRole('button', { name: 'Yes', exact: true });
  await yes.waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS });
  await yes.click();
  await waitFor(page, () => {
    const services = window.services;
    return Boolean(services && services.segmentationService.getSegmentations().length > 0);
  }, 'the segmentation to load');
  const view = await page.evaluate(viewportState);
  if (view.imageId !== geometryBefore.image_id) {
    // The viewer jumped to another image when it loaded the SEG: go back to the one shown before.
    const sop = geometryBefore.sop_instance_uid;
    log(`the viewer moved to another image when the SEG loaded; scrolling back to ${sop}`);
    await showImage(page, sop);
  }
  await parkMouse(page);
  await waitStable(page, 'segmentation');
  const after = `${shot}-2-seg.png`;
  await page.screenshot({ path: after });
  const segmentations = await page.evaluate(() =>
    window.services.segmentationService.getSegmentations().map((s) => ({
      label: s.label,
      segments: Object.values(s.segments || {}).map((g) => ({ label: g.label, color: g.color })),
    })),
  );
  return {
    before: path.basename(before),
    after: path.basename(after),
    geometry_before: geometryBefore,
    geometry: await page.evaluate(imageGeometry),
    segmentations,
  };
}

async function loadSr(page, description, shot) {
  await page.getByText(description, { exact: true }).dblclick();
  await waitFor(page, () => {
    const tools = window.cornerstoneTools;
    const cs = window.cornerstone;
    if (!tools || !cs) {
      return false;
    }
    const shown = tools.annotation.state.getAllAnnotations().filter((a) => a.metadata.toolName === 'DICOMSRDisplay');
    const e = cs.getEnabledElements()[0];
    const imageId = e && e.viewport.getCurrentImageId && e.viewport.getCurrentImageId();
    return shown.some((a) => a.metadata.referencedImageId === imageId) && Boolean(e.viewport.csImage);
  }, 'the SR measurements to be shown on their image');
  // The SR viewport sets which measurements it shows after the image has rendered, and sometimes
  // only after the annotation layer's last render: the outline then appears on the next render (any
  // interaction in a browser). Ask for that render, as a person's next mouse action would.
  await page.evaluate(() => {
    const ids = window.cornerstone.getEnabledElements().map((e) => e.viewport.id);
    window.cornerstoneTools.utilities.triggerAnnotationRenderForViewportIds(ids);
  });
  await waitFor(page, () => document.querySelectorAll('svg text').length > 0, 'the SR labels to be drawn', 20_000);
  await parkMouse(page);
  await waitStable(page, 'SR');
  const screenshot = `${shot}-3-sr.png`;
  await page.screenshot({ path: screenshot });
  const labels = await page.evaluate(() =>
    Array.from(document.querySelectorAll('svg text'))
      .flatMap((t) => (t.querySelectorAll('tspan').length ? Array.from(t.querySelectorAll('tspan')) : [t]))
      .map((t) => t.textContent.trim())
      .filter((t) => t.length > 0),
  );
  const outlines = await page.evaluate(() => {
    const cs = window.cornerstone;
    return window.cornerstoneTools.annotation.state
      .getAllAnnotations()
      .filter((a) => a.metadata.toolName === 'DICOMSRDisplay')
      .map((a) => {
        const match = /\/instances\/([0-9.]+)\/frames\/(\d+)/.exec(a.metadata.referencedImageId || '') || [];
        return {
          tracking_unique_identifier: a.data.TrackingUniqueIdentifier,
          sop_instance_uid: match[1] || null,
          graphic_type: a.metadata.graphicType,
          points: Object.values(a.data.renderableData || {}).flat().reduce((n, line) => n + line.length, 0),
        };
      });
  });
  return { screenshot: path.basename(screenshot), geometry: await page.evaluate(imageGeometry), labels, outlines };
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf-8'));
  fs.mkdirSync(plan.out, { recursive: true });
  const profile = fs.mkdtempSync(path.join(plan.profile_root || '/tmp', 'samie-chromium-'));
  const started = Date.now();
  const browser = await launch(plan, profile);
  const results = { url: plan.url, views: [], chromium: browser.browser()?.version() || null };
  try {
    let first = true;
    for (const view of plan.views) {
      const page = await browser.newPage();
      const errors = [];
      page.on('pageerror', (err) => errors.push(`pageerror: ${err.message.split('\n')[0]}`));
      page.on('console', (message) => {
        const text = message.text();
        if (message.type() === 'error' || /Error Boundary/.test(text)) {
          errors.push(`${message.type()}: ${text.split('\n')[0].slice(0, 300)}`);
        }
      });
      const result = { name: view.name, study: view.study, errors };
      const viewStarted = Date.now();
      try {
        log(`${view.name}: opening study ${view.study}`);
        result.tour_dismissed = await openStudy(page, plan.url, view, first);
        first = false;
        const shot = path.join(plan.out, view.name);
        if (view.seg) {
          log(`${view.name}: loading SEG "${view.seg}"`);
          result.seg = await loadSeg(page, view.seg, shot, view.seg_series);
        }
        if (view.sr) {
          // A fresh load of the study: OHIF 3.13 fails (route error boundary, "Cannot destructure
          // property 'SOPInstanceUID' of 'metadataProvider.getUIDsFromImageID(...)'") when an SR is
          // opened after a SEG was loaded in the same session.
          if (view.seg) {
            await openStudy(page, plan.url, { ...view, image: null }, false);
          }
          log(`${view.name}: loading SR "${view.sr}"`);
          result.sr = await loadSr(page, view.sr, shot);
        }
      } catch (err) {
        result.failure = err.message;
        const failed = path.join(plan.out, `${view.name}-failed.png`);
        await page.screenshot({ path: failed }).catch(() => {});
        result.failure_screenshot = path.basename(failed);
        log(`${view.name}: FAILED ${err.message}`);
      }
      result.seconds = (Date.now() - viewStarted) / 1000;
      results.views.push(result);
      await page.close();
    }
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  results.seconds = (Date.now() - started) / 1000;
  fs.writeFileSync(path.join(plan.out, 'results.json'), JSON.stringify(results, null, 2));
  process.stdout.write(`${JSON.stringify(results)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
