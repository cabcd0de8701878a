// What drive.mjs (the SEG and SR views) and draw.mjs (drawing a rectangle, Create SR) share: the
// chromium flags, the step timeout, a logger, waiting on a page condition, the default viewport's state
// and dismissing OHIF's guided tour.
import { chromium } from 'playwright-core';

export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
export const STEP_TIMEOUT_MS = 90_000;

export function logger(name) {
  return (message) => process.stderr.write(`[${name} ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

export async function waitFor(page, predicate, what, timeoutMs = STEP_TIMEOUT_MS, arg = undefined) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: timeoutMs, polling: 250 });
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${err.message.split('\n')[0]}`);
  }
}

// The default viewport's state, from cornerstone (OHIF exposes it as window.cornerstone).
export function viewportState() {
  const cs = window.cornerstone;
  const elements = cs ? cs.getEnabledElements() : [];
  const enabled = elements.find((e) => e.viewport.id === 'default') || elements[0];
  if (!enabled) {
    return null;
  }
  const vp = enabled.viewport;
  const imageId = vp.getCurrentImageId ? vp.getCurrentImageId() : null;
  const ids = vp.getImageIds ? vp.getImageIds() : [];
  return { type: vp.type, imageId, index: ids.indexOf(imageId), imageIds: ids, hasImage: Boolean(vp.csImage) };
}

export async function dismissTour(page, waitMs) {
  const skip = page.locator('.shepherd-element').getByRole('button', { name: 'Skip all' });
  try {
    await skip.waitFor({ state: 'visible', timeout: waitMs });
  } catch {
    return false;
  }
  await skip.click();
  await page.locator('.shepherd-element').waitFor({ state: 'detached', timeout: 10_000 });
  return true;
}

// Scroll the default viewport (the wheel over its centre, given by centre()) to the image.
export async function scrollTo(page, sopInstanceUid, centre) {
  let direction = 100;
  let lastDistance = Infinity;
  for (let step = 0; step < 400; step++) {
    const state = await page.evaluate(viewportState);
    const target = state.imageIds.findIndex((id) => id.includes(`/instances/${sopInstanceUid}/`));
    if (target < 0) {
      throw new Error(`image ${sopInstanceUid} is not in the displayed series`);
    }
    const distance = Math.abs(target - state.index);
    if (distance === 0) {
      return step;
    }
    if (distance > lastDistance) {
      direction = -direction; // this viewer scrolls the other way
    }
    lastDistance = distance;
    const [cx, cy] = await centre();
    await page.mouse.move(cx, cy);
    await page.mouse.wheel(0, direction);
    await page.waitForTimeout(120);
  }
  throw new Error(`could not scroll to image ${sopInstanceUid}`);
}

// A fresh headless chromium (persistent context in ``profile``) as both drivers use it.
export async function launch(plan, profile) {
  return chromium.launchPersistentContext(profile, {
    executablePath: plan.chromium || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: plan.viewport || { width: 1280, height: 800 },
    deviceScaleFactor: 1,
  });
}
