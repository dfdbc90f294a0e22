// Debian's Chromium (never a downloaded browser), headless, with WebGPU: on a machine
// without a GPU it runs on SwiftShader. CHROMIUM overrides the executable. The network
// flags keep Chromium from reaching for Google's services on closed networks.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/// `extra`: more Chromium flags (the bench adds the one that exposes timestamp queries).
export function launch(extra = []) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extra] });
}
