// `npm run bench`: the memory layer's forward tokens/s in the browser (the page's Benchmark
// button, headless Chromium's WebGPU) next to the native figure on the same machine
// (`memlayers bench --quick`, the same workload: ForwardWorkload, small configuration, f32,
// 512 tokens), and their ratio. Both run in this process's session, one after the other.
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { build, root } from "./build.mjs";
import { launch } from "./browser.mjs";
import { serve } from "./serve.mjs";

const ITERS = Number(process.env.ITERS || 5);
if (!process.env.SKIP_BUILD) build();

const server = await serve(0);
// Timestamp queries (per-kernel GPU time) are behind this flag in Chrome.
const browser = await launch(["--enable-dawn-features=allow_unsafe_apis"]);
let browserTps, browserKernels;
try {
  const page = await browser.newPage();
  const variants = process.env.VARIANTS ? `?variants=${process.env.VARIANTS}` : "";
  await page.goto(`http://127.0.0.1:${server.address().port}/${variants}`);
  await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
  const adapter = await page.textContent("#gpu-status");
  await page.click("#bench");
  await page.waitForSelector("#bench-status[data-tokens-per-s], #bench-status.error", { timeout: 600_000 });
  browserTps = Number(await page.getAttribute("#bench-status", "data-tokens-per-s"));
  browserKernels = JSON.parse((await page.getAttribute("#bench-status", "data-kernels")) || "[]");
  console.log(`browser (${(await browser.version())}): ${adapter.trim()}`);
} finally {
  await browser.close();
  server.close();
}
if (!(browserTps > 0)) throw new Error("the browser bench failed");

const native = execFileSync("cargo", ["run", "--release", "--quiet", "--", "bench", "--quick", "--iters", String(ITERS)], {
  cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"],
  env: { WGPU_BACKEND: "vulkan", XDG_RUNTIME_DIR: tmpdir(), ...process.env },
});
const adapterLine = native.split("\n").find((l) => l.startsWith("adapter:"));
const m = native.match(/F32[^\n]*\n\s*forward: (\d+) tokens\/s/);
if (!m) throw new Error("could not read the native figure from:\n" + native);
const nativeTps = Number(m[1]);
console.log(`native ${adapterLine}`);
console.log("memory layer forward, d=256 heads=4 n_keys=128 knn=16 k_dim=128, f32 values, 512 tokens:");
console.log(`  browser ${Math.round(browserTps)} tokens/s`);
for (const [label, ms] of browserKernels) console.log(`    ${label.padEnd(24)} ${ms.toFixed(3)} ms`);
console.log(`  native  ${nativeTps} tokens/s`);
const nativeKernels = native.split(/\n\n/).find((b) => /F32/.test(b)) || "";
for (const line of nativeKernels.split("\n").filter((l) => / ms$/.test(l))) console.log(`  ${line}`);
console.log(`  browser / native: ${(browserTps / nativeTps).toFixed(2)} (target >= 0.5)`);
