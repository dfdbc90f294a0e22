// `npm run build`: the wasm bindings (web/wasm, release, wasm32-unknown-unknown), their JS
// glue from wasm-bindgen (the CLI pinned to the crate's version, installed when missing by
// scripts/wasm-tools.sh), and the page's static files, into web/dist/.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const web = join(dirname(fileURLToPath(import.meta.url)), "..");
export const root = join(web, "..");
export const dist = join(web, "dist");

const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: "inherit", cwd: root, ...opts });

export function build() {
  run("bash", ["scripts/wasm-tools.sh"]);
  run("cargo", ["build", "--release", "--target", "wasm32-unknown-unknown", "-p", "memlayers-web"]);
  rmSync(dist, { recursive: true, force: true });
  mkdirSync(dist, { recursive: true });
  run("wasm-bindgen", [
    "--target", "web", "--no-typescript", "--out-dir", join(dist, "pkg"),
    join(root, "target", "wasm32-unknown-unknown", "release", "memlayers_web.wasm"),
  ]);
  cpSync(join(web, "src"), dist, { recursive: true });
  console.log(`built ${dist}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) build();
