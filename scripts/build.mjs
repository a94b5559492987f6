// Builds what runs into build/ (git-ignored): the mergekit-moe command, the library entry and its types, the Nx
// plugin, generator and executors, and the forward worker. Run by `npm ci` (prepare), `npm pack`, `npm test` and
// `npm run build`; nothing is bundled at run time. build/manifest.json holds the sha256 of every source each
// bundle was built from: bin/built.js refuses a build that no longer matches the checkout's sources.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { writeCodeCache } from './code-cache.mjs';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const OUT = join(ROOT, 'build');
// Sources last changed a second before this (before the bundles read them) get their stat keys recorded.
const SETTLED_NS = BigInt(Date.now() - 1000) * 1000000n;
// Nx's runtime inputs (tools/executors/<name>.ts), run as `node build/runtime/<name>.js`.
const RUNTIME_INPUTS = ['model-ids', 'output-state'];
const EXECUTORS = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'write', 'check-options', 'report', 'model-ids', 'stage', 'build-summary', 'watch'];

let esbuild;
try {
  esbuild = require('esbuild');
} catch {
  console.error('moe-forge build: esbuild is not installed (a devDependency): run npm ci without --omit=dev');
  process.exit(1);
}

const tmp = `${OUT}.${process.pid}.tmp`;
rmSync(tmp, { recursive: true, force: true });

const common = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  packages: 'external',
  // Maps name the checkout's sources (not copied in: the sources sit beside them, or are not shipped).
  sourcemap: true,
  sourcesContent: false,
  logLevel: 'error',
  metafile: true,
  absWorkingDir: ROOT,
};

// The command's bundle carries its plain-JavaScript packages (and theirs) inside it: resolved from node_modules file
// by file, zod, yaml and cacache took ~0.18 s of every command's start; one file with its V8 code cache (below)
// loads in about a third of that. Packages with native parts or files of their own stay external.
const CLI_BUNDLED = new Set(['zod', 'yaml', 'cacache', '@huggingface/tokenizers']);
const bundleOnly = {
  name: 'bundle-only',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:')) return undefined;
      const name = args.path.split('/').slice(0, args.path.startsWith('@') ? 2 : 1).join('/');
      // A bundled package's own imports are bundled with it (externals are never followed into node_modules).
      if (CLI_BUNDLED.has(name) || args.importer.split('\\').join('/').includes('/node_modules/')) return undefined;
      return { path: args.path, external: true };
    });
  },
};
try {
  // The float kernels' WebAssembly modules (libs/safetensors/float-wasm.ts, FLOAT_WASM_MODULES), assembled here once
  // and put into every bundle as base64 (__FLOAT_WASM__): assembled at run time they took a command's main thread
  // ~40 ms. Also written to build/float-wasm.json, which the tests hold against the sources' own assembly.
  const wasmSource = await esbuild.build({ ...common, entryPoints: [join(ROOT, 'libs', 'safetensors', 'float-wasm.ts')], write: false, sourcemap: false, metafile: false, outdir: tmp });
  const wasmModule = { exports: {} };
  new Function('module', 'exports', 'require', wasmSource.outputFiles[0].text)(wasmModule, wasmModule.exports, require);
  const FLOAT_WASM = Object.fromEntries(Object.entries(wasmModule.exports.FLOAT_WASM_MODULES).map(([name, make]) => [name, Buffer.from(make()).toString('base64')]));
  mkdirSync(tmp, { recursive: true });
  writeFileSync(join(tmp, 'float-wasm.json'), JSON.stringify(FLOAT_WASM) + '\n');
  // The tokenizer library's version, which the compact tokenizer's cache entries name (libs/tokenizer): the one
  // bundled into cli.js (CLI_BUNDLED), read here rather than resolved at run time (~6 ms of every edit's command).
  const TOKENIZERS_VERSION = JSON.parse(readFileSync(join(ROOT, 'node_modules', '@huggingface', 'tokenizers', 'package.json'), 'utf8')).version;
  const BUILT = { __FLOAT_WASM__: JSON.stringify(JSON.stringify(FLOAT_WASM)), __TOKENIZERS_VERSION__: JSON.stringify(String(TOKENIZERS_VERSION)) };
  const WORKER_NAMES = { ...BUILT, __FORWARD_WORKER__: JSON.stringify('forward-worker.js'), __ROUTING_WORKER__: JSON.stringify('routing-worker.js'), __NOISE_WORKER__: JSON.stringify('noise-worker.js'), __HASH_WORKER__: JSON.stringify('hash-worker.js') };
  // The command: its own bundle (its plain-JavaScript packages inside, bundleOnly), and a code cache of it.
  const cli = await esbuild.build({
    ...common,
    packages: undefined,
    plugins: [bundleOnly],
    entryPoints: { cli: join(ROOT, 'libs', 'cli', 'mergekit-moe.ts') },
    outdir: tmp,
    define: WORKER_NAMES,
    charset: 'ascii',
  });
  // ASCII throughout: esbuild escapes every string, regex and name (charset ascii) but copies comments as written,
  // and one non-ASCII character in a comment makes V8 hold the whole 2 MB source as a two-byte string, decoded and
  // copied at every start. In comments a character for a character keeps the source map's columns.
  const cliText = readFileSync(join(tmp, 'cli.js'), 'utf8');
  if (/[^\x00-\x7f]/.test(cliText)) writeFileSync(join(tmp, 'cli.js'), cliText.replace(/[^\x00-\x7f]/g, '?'));
  const why = writeCodeCache(join(tmp, 'cli.js'), join(OUT, 'cli.js'));
  if (why) console.error(`moe-forge build: no code cache for cli.js (${why}): it loads without one`);
  // The forward pass forks forward-worker.js (and the report routing-worker.js), named relative to the bundle that
  // forks it (libs/forward/isolated.ts, libs/stages/report.ts).
  const top = await esbuild.build({
    ...common,
    entryPoints: {
      noop: join(ROOT, 'libs', 'cli', 'noop-memo.ts'),
      early: join(ROOT, 'libs', 'cli', 'early-worker.ts'),
      index: join(ROOT, 'libs', 'index.ts'),
      'forward-worker': join(ROOT, 'libs', 'forward', 'worker-main.ts'),
      'routing-worker': join(ROOT, 'libs', 'stages', 'routing-worker.ts'),
      'noise-worker': join(ROOT, 'libs', 'noise', 'normals-worker.ts'),
      'hash-worker': join(ROOT, 'libs', 'resolve', 'hash-worker.ts'),
      plugin: join(ROOT, 'tools', 'executors', 'index.ts'),
      'recipe-generator': join(ROOT, 'tools', 'executors', 'recipe', 'generator.ts'),
    },
    outdir: tmp,
    define: WORKER_NAMES,
  });
  const executors = await esbuild.build({
    ...common,
    entryPoints: { ...Object.fromEntries(EXECUTORS.map((e) => [e, join(ROOT, 'tools', 'executors', e, 'impl.ts')])), 'stage-batch': join(ROOT, 'tools', 'executors', 'stage', 'batch.ts'), 'recipe-stage': join(ROOT, 'tools', 'executors', 'stage', 'recipe.ts') },
    outdir: join(tmp, 'executors'),
    define: { ...BUILT, __FORWARD_WORKER__: JSON.stringify('../forward-worker.js'), __ROUTING_WORKER__: JSON.stringify('../routing-worker.js'), __NOISE_WORKER__: JSON.stringify('../noise-worker.js'), __HASH_WORKER__: JSON.stringify('../hash-worker.js') },
  });
  // The plugin's runtime inputs, which Nx runs on every build: small bundles that load the stages' code only when
  // their memo misses (tools/executors/runtime-root.ts).
  const runtime = await esbuild.build({
    ...common,
    entryPoints: Object.fromEntries(RUNTIME_INPUTS.map((e) => [e, join(ROOT, 'tools', 'executors', `${e}.ts`)])),
    outdir: join(tmp, 'runtime'),
    define: BUILT,
  });

  // The library's types: libs/index.ts declares them itself, so its declaration is emitted alone, in milliseconds.
  const ts = require('typescript');
  const dts = ts.transpileDeclaration(readFileSync(join(ROOT, 'libs', 'index.ts'), 'utf8'), { fileName: 'index.ts', compilerOptions: { strict: true } });
  const problems = (dts.diagnostics ?? []).map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' '));
  if (problems.length) throw new Error(`libs/index.ts: ${problems.join('; ')}`);
  writeFileSync(join(tmp, 'index.d.ts'), dts.outputText);

  // Node addons, each compiled where a C compiler and Node's headers are, else left out: the forward pass's kernels
  // (native/bf16-matmul.c; without it the bf16 precision says so, fp32 needs nothing native) and the noise's
  // generator (native/normals.c; without it the noise runs in WebAssembly, the same values). Built again only when
  // its source changed since the last build (`native` in the manifest; not among `sources`, which copies of build/
  // without the C sources are checked against).
  const ADDONS = [
    { source: join('native', 'bf16-matmul.c'), file: 'bf16-matmul.node', without: 'forward precision bf16 is unavailable' },
    { source: join('native', 'normals.c'), file: 'normals.node', without: 'the noise is generated in WebAssembly' },
  ];
  let lastNative = {};
  try {
    const last = JSON.parse(readFileSync(join(OUT, 'manifest.json'), 'utf8')).native;
    // An earlier build's one addon hash was the forward kernels'.
    lastNative = typeof last === 'string' ? { 'bf16-matmul.node': last } : last && typeof last === 'object' ? last : {};
  } catch {
    // no earlier build
  }
  const native = {};
  for (const { source, file, without } of ADDONS) {
    // The source and the local headers it includes ("name.h" beside it): an edit of either builds it again.
    let hash = null;
    if (existsSync(join(ROOT, source))) {
      const h = createHash('sha256');
      const text = readFileSync(join(ROOT, source), 'utf8');
      h.update(text);
      for (const [, header] of text.matchAll(/^#include "([^"]+)"/gm)) h.update(`\0${header}\0`).update(readFileSync(join(ROOT, dirname(source), header)));
      hash = h.digest('hex');
    }
    if (!hash) {
      console.error(`moe-forge build: no ${source}: ${without}`);
      continue;
    }
    if (lastNative[file] === hash && existsSync(join(OUT, file))) {
      writeFileSync(join(tmp, file), readFileSync(join(OUT, file)));
      native[file] = hash;
      continue;
    }
    const headers = join(dirname(process.execPath), '..', 'include', 'node');
    const cc = process.env.CC || 'cc';
    const r = existsSync(join(headers, 'node_api.h'))
      ? spawnSync(cc, ['-O3', '-fPIC', '-shared', '-std=gnu11', `-I${headers}`, join(ROOT, source), '-o', join(tmp, file), '-lpthread', '-lm'], { encoding: 'utf8' })
      : null;
    if (r?.status === 0) native[file] = hash;
    else console.error(`moe-forge build: ${source} not compiled (${r ? (r.error?.message ?? r.stderr.split('\n')[0]) : `no node_api.h in ${headers}`}): ${without}`);
  }

  // Every source file a bundle was built from, by content; for the packages bundled into the command, the lockfile
  // (which names their versions) rather than their hundreds of files.
  const inputs = new Set([cli, top, executors, runtime].flatMap((b) => Object.keys(b.metafile.inputs)).filter((f) => !f.split('\\').join('/').includes('node_modules/')));
  if (existsSync(join(ROOT, 'package-lock.json'))) inputs.add('package-lock.json');
  // With each source's stat key (bin/built.js compares it before hashing), where the file had settled a second before
  // this build began: an edit after the build then changes its ctime, which no tool sets back.
  const sources = {};
  const stats = {};
  const settled = SETTLED_NS;
  for (const rel of [...inputs].sort()) {
    const file = join(ROOT, rel);
    const key = relative(ROOT, file).split('\\').join('/');
    const st = statSync(file, { bigint: true });
    sources[key] = createHash('sha256').update(readFileSync(file)).digest('hex');
    if (st.ctimeNs < settled && st.mtimeNs < settled) stats[key] = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  }
  writeFileSync(join(tmp, 'manifest.json'), JSON.stringify({ sources, stats, ...(Object.keys(native).length ? { native } : {}) }, null, 1) + '\n');

  // Into place file by file, each by a rename, and only where it changed: processes running from build/ (Nx
  // tasks, tests) never see a missing or half-written file, and a build of unchanged sources changes nothing.
  const files = (dir, rel = '') => readdirSync(join(dir, rel), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(dir, join(rel, e.name)) : [join(rel, e.name)]));
  const fresh = new Set(files(tmp));
  for (const rel of fresh) {
    const to = join(OUT, rel);
    if (existsSync(to) && readFileSync(to).equals(readFileSync(join(tmp, rel)))) continue;
    mkdirSync(dirname(to), { recursive: true });
    renameSync(join(tmp, rel), to);
  }
  for (const rel of files(OUT)) if (!fresh.has(rel)) rmSync(join(OUT, rel));
  rmSync(tmp, { recursive: true, force: true });
} catch (e) {
  rmSync(tmp, { recursive: true, force: true });
  console.error(`moe-forge build: ${String(e instanceof Error ? e.message : e).split('\n')[0]}`);
  process.exit(1);
}
