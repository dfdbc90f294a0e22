// `npm test`'s first step (npm runs it as `pretest`): on a fresh machine, say in one line
// what to run first instead of failing deep inside a script.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { web } from "./build.mjs";

const has = (cmd) => {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};
const missing = [];
if (!existsSync(join(web, "node_modules", "playwright-core"))) missing.push("`npm ci` (in web/) for playwright-core");
if (!has("cargo")) missing.push("Rust (https://rustup.rs)");
if (!has("chromium") || !has("chromedriver")) missing.push("Debian's chromium and chromium-driver (`sudo apt-get install chromium chromium-driver`)");
if (missing.length) {
  console.error(`npm test needs ${missing.join("; ")}; or run scripts/test.sh from the repository root, which installs them.`);
  process.exit(1);
}
