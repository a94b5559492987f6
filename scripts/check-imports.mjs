// The libraries' boundaries, checked: product code (libs/, tools/, bench/, bin/, scripts/) reaches another
// library only through its index, and the libraries' import graph has no cycle. Tests may reach internals.
// `node scripts/check-imports.mjs` prints one line per violation and exits 1 when there is any.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

// The tree to check: the repository, or the folder given (the check's own test passes one).
const root = resolve(process.argv[2] ?? join(dirname(new URL(import.meta.url).pathname), '..'));
const SCANNED = ['libs', 'tools', 'bench', 'bin', 'scripts'];
const SOURCE = /\.(ts|js|mjs|cjs)$/;

function walk(dir, out) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (SOURCE.test(name) && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

// Static and dynamic imports, re-exports, require(): the specifier of each.
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm;

function specifiers(text) {
  // Comments may quote import lines; drop them first (strings with // in them do not name modules).
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  return [...code.matchAll(SPECIFIER)].map((m) => m[1]);
}

/** The file a relative specifier names (TypeScript's resolution of extensionless paths and folders). */
function resolveSpec(from, spec) {
  const base = resolve(dirname(from), spec);
  for (const c of [base, `${base}.ts`, `${base}.js`, join(base, 'index.ts'), join(base, 'index.js')]) {
    if (existsSync(c) && statSync(c).isFile()) return c;
  }
  return null;
}

/** libs/<name>/... -> name, else null. */
function libraryOf(file) {
  const parts = relative(root, file).split(sep);
  return parts[0] === 'libs' && parts.length > 2 ? parts[1] : null;
}

const problems = [];
const edges = new Map(); // library -> Map(library -> first importing file)
for (const dir of SCANNED) {
  for (const file of walk(join(root, dir), [])) {
    const from = libraryOf(file);
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      if (!spec.startsWith('.')) continue;
      const target = resolveSpec(file, spec);
      if (!target) continue;
      const to = libraryOf(target);
      if (!to || to === from) continue;
      const rel = relative(join(root, 'libs', to), target).split(sep).join('/');
      if (!/^index\.(ts|js)$/.test(rel)) problems.push(`${relative(root, file)}: imports ${spec} (libs/${to}/${rel}); import libs/${to} through its index.ts`);
      if (from) {
        if (!edges.has(from)) edges.set(from, new Map());
        if (!edges.get(from).has(to)) edges.get(from).set(to, relative(root, file));
      }
    }
  }
}

// Cycles among libraries: depth-first search, each cycle reported once by its smallest rotation.
const seen = new Set();
const reported = new Set();
function visit(lib, path) {
  const at = path.indexOf(lib);
  if (at >= 0) {
    const cycle = path.slice(at);
    const start = cycle.indexOf([...cycle].sort()[0]);
    const key = [...cycle.slice(start), ...cycle.slice(0, start)];
    const id = key.join(' -> ');
    if (!reported.has(id)) {
      reported.add(id);
      const via = key.map((l, i) => `${l} -> ${key[(i + 1) % key.length]} (${edges.get(l).get(key[(i + 1) % key.length])})`);
      problems.push(`library cycle: ${id} -> ${key[0]}: ${via.join('; ')}`);
    }
    return;
  }
  if (seen.has(lib)) return;
  for (const next of edges.get(lib)?.keys() ?? []) visit(next, [...path, lib]);
  if (path.length === 0) seen.add(lib);
}
for (const lib of [...edges.keys()].sort()) visit(lib, []);

for (const p of problems) console.error(p);
if (problems.length) {
  console.error(`${problems.length} import problem(s): see docs/ARCHITECTURE.md, "Libraries"`);
  process.exit(1);
}
console.log(`imports: ${edges.size} libraries, every cross-library import through an index, no cycle`);
