#!/usr/bin/env -S node --disable-warning=ExperimentalWarning
// Runs a wasm32-wasip1 test binary under Node's WASI (preview1), for
// `cargo test --target wasm32-wasip1` (see .cargo/config.toml):
//
//   node tests/wasi-runner.mjs <test.wasm> [libtest args…]
//
// Exits with the binary's exit code. wasm32 has no unwinding, so a panicking
// test aborts the whole binary (a trap): the runner exits 101, like a failed
// native test, and says so. Because libtest would swallow the panic message
// of a captured test that aborts, the runner adds `--nocapture` (tests run one
// after another here, so the output stays readable).
// No files or directories are shared with the module.
import { readFile } from "node:fs/promises";
import { argv, env, exit, stderr } from "node:process";
import { WASI } from "node:wasi";

const [wasmPath, ...testArgs] = argv.slice(2);
if (!wasmPath) {
  stderr.write("usage: node tests/wasi-runner.mjs <file.wasm> [args…]\n");
  exit(2);
}

// libtest reads only a few variables; pass them on, nothing else.
const passEnv = {};
for (const name of ["RUST_BACKTRACE", "RUST_TEST_THREADS", "RUST_TEST_NOCAPTURE", "RUST_MIN_STACK", "NO_COLOR"]) {
  if (env[name] !== undefined) passEnv[name] = env[name];
}

const args = [wasmPath, ...testArgs];
const listing = testArgs.includes("--list");
if (!listing && !testArgs.includes("--nocapture") && !testArgs.includes("--no-capture")) {
  args.push("--nocapture");
}

const wasi = new WASI({
  version: "preview1",
  args,
  env: passEnv,
  preopens: {},
  returnOnExit: true,
});

let code;
try {
  const module = await WebAssembly.compile(await readFile(wasmPath));
  // The filter's tests link proxy-wasm's host calls; a test that reaches one
  // (instead of a fake host) traps, naming it.
  const imports = wasi.getImportObject();
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.kind !== "function" || imports[imp.module]?.[imp.name]) continue;
    imports[imp.module] ??= {};
    imports[imp.module][imp.name] = () => {
      throw new WebAssembly.RuntimeError(`host call ${imp.module}.${imp.name} is not available in unit tests`);
    };
  }
  const instance = await WebAssembly.instantiate(module, imports);
  // A proxy-wasm module also exports the reactor's `_initialize` (the
  // filter's entry point for a host); a test binary starts at `_start`.
  const exports = Object.fromEntries(Object.entries(instance.exports).filter(([name]) => name !== "_initialize"));
  code = wasi.start({ exports });
} catch (err) {
  const what = err instanceof WebAssembly.RuntimeError ? `trapped (${err.message})` : `failed: ${err && err.stack ? err.stack : err}`;
  stderr.write(
    `\nwasi-runner: ${wasmPath} ${what}.\n` +
      "wasi-runner: on wasm32 a panic aborts the whole test binary: the panic above ended the run, later tests did not run.\n",
  );
  code = 101;
}
exit(code ?? 0);
