// npm's install step: build the optional native kernels (native/, issue 22) with
// node-gyp. Never fails the install: on any failure it prints one line and exits
// 0, and syncbn runs on WebAssembly (each run then says why in one notice line;
// an explicit --kernels native is refused). SYNCBN_NATIVE=off skips the build.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function nodeGyp() {
  // npm's bundled copy: npm runs install scripts with npm_execpath set to its cli.
  const candidates = [];
  if (process.env.npm_execpath) candidates.push(join(dirname(process.env.npm_execpath), "..", "node_modules", "node-gyp", "bin", "node-gyp.js"));
  try {
    candidates.push(createRequire(import.meta.url).resolve("node-gyp/bin/node-gyp.js"));
  } catch {}
  candidates.push("/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js");
  return candidates.find((p) => existsSync(p));
}

function main() {
  if (process.env.SYNCBN_NATIVE === "off") return "SYNCBN_NATIVE=off";
  const gyp = nodeGyp();
  if (!gyp) return "node-gyp not found";
  // Headers: npm's nodedir setting, else this node's own prefix when it ships them (distro packages),
  // else node-gyp downloads them.
  const prefix = join(dirname(process.execPath), "..");
  const nodedir = process.env.npm_config_nodedir || (existsSync(join(prefix, "include", "node", "node_api.h")) ? prefix : "");
  const args = [gyp, "rebuild", "-C", join(root, "native"), ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
  const r = spawnSync(process.execPath, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) return r.error.message;
  if (r.status !== 0) {
    const lines = `${r.stderr}`.split("\n").filter((l) => /error/i.test(l));
    return `node-gyp exited ${r.status}${lines[0] ? `: ${lines[0].trim().slice(0, 160)}` : ""}`;
  }
  return null;
}

let reason;
try {
  reason = main();
} catch (e) {
  reason = e instanceof Error ? e.message : String(e);
}
if (reason) console.log(`syncbn: native kernels not built (${reason}); using WebAssembly`);
process.exit(0);
