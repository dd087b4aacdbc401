#!/usr/bin/env node
// Build a JavaScript Weir policy into a WebAssembly component with componentize-js.
//
//   node sdk/js/build.mjs --wit wit --world pricing --source examples/x/guest.js --out build/x.wasm
//
// Options:
//   --wit DIR      WIT package directory (the Weir contract, `wit/`)
//   --world NAME   world to target: router | pricing | pipeline
//   --source FILE  the guest's ES module (its exports implement the world)
//   --out FILE     where to write the component (parent directories are created)
//   --root DIR     directory the guest's relative imports may reach (default: the
//                  repository root when the source lies inside it, else the source's directory)
//   --pure         also disable stdio, random and clocks: the component imports no WASI at
//                  all, but uncaught exceptions trap silently and timers are unavailable
//
// componentize-js is loaded from $WEIR_NODE_MODULES, default <repo>/.tools/node/node_modules.

import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve, isAbsolute } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const sdkDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(sdkDir, '..', '..');

function usage(message) {
  if (message) console.error(`build.mjs: ${message}`);
  console.error(
    'usage: node sdk/js/build.mjs --wit DIR --world NAME --source FILE --out FILE [--root DIR] [--pure]',
  );
  process.exit(2);
}

function isInside(dir, path) {
  const rel = relative(dir, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

async function loadComponentize() {
  const nodeModules = resolve(
    process.env.WEIR_NODE_MODULES || join(repoRoot, '.tools', 'node', 'node_modules'),
  );
  const pkgDir = join(nodeModules, '@bytecodealliance', 'componentize-js');
  const pkgJson = join(pkgDir, 'package.json');
  if (!existsSync(pkgJson)) {
    throw new Error(
      `componentize-js not found under ${nodeModules} (set WEIR_NODE_MODULES to the node_modules holding it)`,
    );
  }
  const pkg = JSON.parse(await readFile(pkgJson, 'utf8'));
  const entry =
    (typeof pkg.exports === 'string' ? pkg.exports : pkg.exports?.import ?? pkg.exports?.['.']?.import) ??
    pkg.module ??
    pkg.main;
  const mod = await import(pathToFileURL(join(pkgDir, entry)).href);
  return { componentize: mod.componentize, version: pkg.version };
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        wit: { type: 'string' },
        world: { type: 'string' },
        source: { type: 'string' },
        out: { type: 'string' },
        root: { type: 'string' },
        pure: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) usage();
  for (const key of ['wit', 'world', 'source', 'out']) {
    if (!values[key]) usage(`missing --${key}`);
  }

  // Resolve everything against the caller's directory before changing it.
  const witPath = resolve(values.wit);
  const sourcePath = resolve(values.source);
  const outPath = resolve(values.out);
  const root = resolve(
    values.root ?? (isInside(repoRoot, sourcePath) ? repoRoot : dirname(sourcePath)),
  );
  if (!existsSync(sourcePath)) usage(`source not found: ${values.source}`);
  if (!existsSync(witPath)) usage(`WIT not found: ${values.wit}`);
  if (!isInside(root, sourcePath)) usage(`source ${values.source} is not inside --root ${root}`);
  // componentize-js mis-strips a root of `/`; a narrower directory always works.
  if (dirname(root) === root) usage('--root must not be the filesystem root');

  // The guest never gets network access from Weir, so never pull in wasi:http.
  const disableFeatures = ['http', 'fetch-event'];
  if (values.pure) disableFeatures.push('stdio', 'random', 'clocks');

  const { componentize, version } = await loadComponentize();

  // componentize-js maps the current directory into the build sandbox when the source lies
  // inside it, so relative imports (e.g. of sdk/js/weir.js) resolve anywhere under `root`.
  process.chdir(root);
  const started = Date.now();
  const { component } = await componentize({
    sourcePath,
    witPath,
    worldName: values.world,
    disableFeatures,
  });

  await mkdir(dirname(outPath), { recursive: true });
  const tmp = `${outPath}.tmp-${process.pid}`;
  await writeFile(tmp, component);
  await rename(tmp, outPath);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.error(
    `built ${outPath} (${component.length} bytes, world ${values.world}, componentize-js ${version}, ${secs}s)`,
  );
}

main().catch((e) => {
  console.error(`build.mjs: ${e?.stack ?? e}`);
  process.exit(1);
});
