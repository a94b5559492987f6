import { existsSync, statSync } from 'node:fs';
import { MODEL_CONFIG, readInputText } from '../input';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { ModelError } from '../errors';
import { readSafetensorsHeader, type SafetensorsHeader } from '../safetensors';
import { readBinFile, readBinTensors } from '../pickle';
import { contentIdDetails } from './content-id';
import { COMPANION_FILES, CONFIG_FILE, TOKENIZER_FILES, chooseWeights, missingModelFiles, weightsOnDisk, type WeightFormat, type WeightLayout } from './files';
import { cachedCommit, snapshotDir, unsafePathReason, writeRef } from './hf-cache';
import { cacheWriteFailure, checkCacheSpace, fetchIntoCache, fetchRemoteSafetensorsHeader, remoteRangeSource, remoteSnapshot, type RemoteSnapshot } from './hub';
import { formatReference, looksLikeRepoId, parseModelReference, type ModelReference, type ModelReferenceInput } from './reference';
import { hubCacheDir, hubSettings, type HubSettings, type ResolveOptions } from './settings';

export type ModelSource = 'local' | 'cache' | 'download';

/** Where a model came from, and what it is. */
export interface ResolvedModel {
  /** The reference as written. */
  ref: string;
  reference: ModelReference;
  /** The folder to read: a local folder or a hub cache snapshot. */
  dir: string;
  /** The commit sha for hub models; the revision as written (usually null) for local folders. */
  revision: string | null;
  source: ModelSource;
  /** Total size of the files a merge reads (config, tokenizer, weights). */
  bytes: number;
  /** Bytes fetched from the hub by this call. */
  downloadedBytes: number;
  contentId: string;
  weightFormat: WeightFormat;
  /** Non-fatal notes, e.g. custom code named in config.json that is never run. */
  warnings: string[];
}

export interface InspectedTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** The weight file's name inside the model folder. */
  file: string;
}

/** A model's config and tensor table, read without downloading weights (header-only over HTTP). */
export interface ModelInspection {
  ref: string;
  reference: ModelReference;
  /** 'hub' = headers read by range requests; config and tokenizer files were put into the cache. */
  source: 'local' | 'cache' | 'hub';
  revision: string | null;
  /** Where config.json lies (local folder or cache snapshot). */
  dir: string;
  /** config.json as read, with `architectures` replaced when the reference overrides it. */
  config: Record<string, unknown>;
  weightFormat: WeightFormat;
  /** Each weight file with its safetensors header (null for .bin files). */
  weightFiles: { name: string; size: number; header: SafetensorsHeader | null }[];
  tensors: Map<string, InspectedTensor>;
  warnings: string[];
}

type Located = { kind: 'local'; dir: string } | { kind: 'hub'; repo: string };

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Local folder first (as mergekit: a path that exists wins), else a hub repo id. */
export function locateReference(ref: ModelReference, baseDir: string = process.cwd()): Located {
  const p = ref.path.startsWith('~/') ? join(homedir(), ref.path.slice(2)) : ref.path;
  const abs = resolve(baseDir, p);
  if (existsSync(abs)) {
    if (!isDir(abs)) throw new ModelError('not_a_folder', `model reference "${ref.raw}" names ${abs}, which is a file; a model is a folder with config.json and weights`);
    return { kind: 'local', dir: abs };
  }
  if (isAbsolute(p) || p.startsWith('.') || p.includes('\\') || !looksLikeRepoId(p)) {
    throw new ModelError('local_missing', `model reference "${ref.raw}": local folder ${abs} does not exist${looksLikeRepoId(p) ? '' : ' (and it is not a Hugging Face repo id like org/name)'}`);
  }
  return { kind: 'hub', repo: p };
}

function customCodeWarnings(config: Record<string, unknown>, refText: string): string[] {
  if (config.auto_map && typeof config.auto_map === 'object') {
    return [`config.json of ${refText} names custom model code (auto_map); it is never downloaded or run (trust_remote_code is not honoured), only the weights are read`];
  }
  return [];
}

async function readConfig(dir: string, refText: string): Promise<Record<string, unknown>> {
  const file = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = await readInputText(file, MODEL_CONFIG);
  } catch (e) {
    // A FIFO, a folder or a huge file in its place is said as such; only a missing file is "has no".
    if ((e as ModelError).code !== 'config_missing') throw e;
    throw new ModelError('missing_config', `model ${refText} has no config.json in ${dir}`, { file });
  }
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new ModelError('bad_config', `config.json of ${refText} is not a JSON object (${(e as Error).message})`, { file });
  }
}

function offlineError(refText: string, repo: string, revision: string | null, s: HubSettings, missing: string[] | null): ModelError {
  const where = `the Hugging Face cache ${s.cacheDir}`;
  const what = missing === null ? `is not in ${where} (no snapshot for revision ${revision ?? 'main'} of ${repo})` : `is incomplete in ${where}: missing ${missing.join(', ')}`;
  return new ModelError('offline_missing', `HF_HUB_OFFLINE=1 forbids downloads, and model ${refText} (repo ${repo}, revision ${revision ?? 'main'}) ${what}. Download it once online, or point the reference at a local folder`);
}

interface HubFetch {
  dir: string;
  sha: string;
  source: 'cache' | 'download';
  downloaded: number;
  snap: RemoteSnapshot | null;
  layout: WeightLayout;
}

/** The snapshot folder the cache holds at the commit a revision points to there (complete or not), or null. */
function snapshotAt(cacheDir: string, repo: string, revision: string | null): { dir: string; sha: string } | null {
  const sha = cachedCommit(cacheDir, repo, revision);
  return sha ? { dir: snapshotDir(cacheDir, repo, sha), sha } : null;
}

/** The snapshot the cache holds for a revision, and the model files it lacks (none: fetch uses it offline). */
async function cachedSnapshot(repo: string, revision: string | null, s: HubSettings): Promise<{ dir: string; sha: string; missing: string[] } | null> {
  const snap = snapshotAt(s.cacheDir, repo, revision);
  return snap && { ...snap, missing: await missingModelFiles(snap.dir) };
}

/**
 * Where a reference's files lie on this machine, read synchronously from the folders alone: its local folder
 * (`cached` false), or the snapshot the Hugging Face cache holds at the commit its revision points to there
 * (`cached` true; complete or not). Null when the cache has no such snapshot, or fetch cannot take the reference.
 */
export function modelDirOnDisk(input: ModelReferenceInput | ModelReference, opts: Pick<ResolveOptions, 'baseDir' | 'cacheDir' | 'env'> = {}): { dir: string; cached: boolean } | null {
  try {
    const ref = toReference(input);
    const loc = locateReference(ref, opts.baseDir);
    if (loc.kind === 'local') return { dir: loc.dir, cached: false };
    if (ref.revision !== null && unsafePathReason(ref.revision)) return null;
    const snap = snapshotAt(opts.cacheDir ? resolve(opts.cacheDir) : hubCacheDir(opts.env ?? process.env), loc.repo, ref.revision);
    return snap && { dir: snap.dir, cached: true };
  } catch {
    return null;
  }
}

/**
 * The folder a reference's fetch would use without the network: a local folder, or the complete snapshot the
 * Hugging Face cache holds at the commit its revision points to there. Null when fetch would have to download, or
 * cannot take the reference (fetch says why). For work done ahead of fetch (a speculated forward pass).
 */
export async function cachedModelDir(input: ModelReferenceInput | ModelReference, opts: ResolveOptions = {}): Promise<string | null> {
  const on = modelDirOnDisk(input, opts);
  if (!on?.cached) return on?.dir ?? null;
  return (await missingModelFiles(on.dir)).length === 0 ? on.dir : null;
}

/**
 * Brings a hub model into the cache: 'full' = config, tokenizer and weights; 'meta' = everything but the weights.
 * A complete cached snapshot is used without touching the network.
 */
async function fetchHubModel(repo: string, ref: ModelReference, s: HubSettings, want: 'full' | 'meta'): Promise<HubFetch> {
  const refText = formatReference(ref);
  const unsafe = ref.revision === null ? null : unsafePathReason(ref.revision);
  // The revision names a file under refs/ in the cache: it must stay a plain relative name.
  if (unsafe) throw new ModelError('bad_revision', `model reference "${ref.raw}": revision ${JSON.stringify(ref.revision)} is not a branch, tag or commit name (${unsafe})`, { field: 'revision' });
  const cached = await cachedSnapshot(repo, ref.revision, s);
  const missing = cached?.missing ?? null;
  if (cached && cached.missing.length === 0) return { dir: cached.dir, sha: cached.sha, source: 'cache', downloaded: 0, snap: null, layout: (await weightsOnDisk(cached.dir))! };
  if (s.offline) throw offlineError(refText, repo, ref.revision, s, missing);

  const snap = await remoteSnapshot(repo, ref.revision, s, refText);
  await writeRef(s.cacheDir, repo, ref.revision ?? 'main', snap.sha).catch((e) => {
    throw cacheWriteFailure(e, s, refText) ?? e;
  });
  const dir = snapshotDir(s.cacheDir, repo, snap.sha);
  let downloaded = 0;
  const get = async (name: string) => {
    const f = snap.files.get(name);
    if (!f) throw new ModelError('hub_missing_file', `model ${refText} (commit ${snap.sha}) has no ${name} on the hub`);
    downloaded += await fetchIntoCache(snap, f, s, refText);
  };
  await get(CONFIG_FILE);
  const layout = await chooseWeights([...snap.files.keys()], async (index) => {
    await get(index);
    return readFile(join(dir, index), 'utf8');
  });
  if (!layout) throw new ModelError('no_weights', `Unable to find model files for ${refText} on the hub (commit ${snap.sha}): no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json`);
  for (const t of [...TOKENIZER_FILES, ...COMPANION_FILES]) if (snap.files.has(t)) await get(t);
  for (const w of layout.files) if (!snap.files.has(w)) throw new ModelError('hub_missing_file', `model ${refText} (commit ${snap.sha}): ${layout.index ?? 'the weights'} names ${w}, which the repo does not have`);
  if (want === 'full') {
    await checkCacheSpace(snap, layout.files.map((w) => snap.files.get(w)!), s, refText);
    for (const w of layout.files) await get(w);
  }
  return { dir, sha: snap.sha, source: downloaded > 0 ? 'download' : 'cache', downloaded, snap, layout };
}

function toReference(input: ModelReferenceInput | ModelReference): ModelReference {
  if (typeof input === 'object' && input !== null && 'raw' in input && 'path' in input) return input as ModelReference;
  return parseModelReference(input as ModelReferenceInput);
}

/** Resolves one reference to a complete folder (downloading what is missing) and identifies its content. */
export async function resolveModel(input: ModelReferenceInput | ModelReference, opts: ResolveOptions = {}): Promise<ResolvedModel> {
  const ref = toReference(input);
  const s = hubSettings(opts);
  const loc = locateReference(ref, opts.baseDir);
  const refText = formatReference(ref);
  let dir: string;
  let source: ModelSource;
  let revision: string | null;
  let downloaded = 0;
  if (loc.kind === 'local') {
    dir = loc.dir;
    source = 'local';
    revision = ref.revision;
    const missing = await missingModelFiles(dir);
    if (missing.length) throw new ModelError('incomplete_model', `model ${refText} (local folder ${dir}) is missing ${missing.join(', ')}`, { file: dir });
  } else {
    const got = await fetchHubModel(loc.repo, ref, s, 'full');
    dir = got.dir;
    source = got.source;
    revision = got.sha;
    downloaded = got.downloaded;
  }
  const layout = (await weightsOnDisk(dir))!;
  const config = await readConfig(dir, refText);
  const id = await contentIdDetails(dir, { cache: opts.cache, ref: refText });
  const warnings = customCodeWarnings(config, refText);
  if (source === 'local' && ref.revision) warnings.push(`revision ${ref.revision} of ${refText} is ignored: it names a local folder, not a hub repo`);
  return { ref: ref.raw, reference: ref, dir, revision, source, bytes: id.bytes, downloadedBytes: downloaded, contentId: id.contentId, weightFormat: layout.format, warnings };
}

function identity(ref: ModelReference, opts: ResolveOptions): string {
  const loc = locateReference(ref, opts.baseDir);
  return loc.kind === 'local' ? `local:${loc.dir}` : `hub:${loc.repo}@${ref.revision ?? 'main'}`;
}

/** Resolves several references; a model named twice is fetched and hashed once. Order is kept. */
export async function resolveModels(inputs: readonly (ModelReferenceInput | ModelReference)[], opts: ResolveOptions = {}): Promise<ResolvedModel[]> {
  const done = new Map<string, ResolvedModel>();
  const out: ResolvedModel[] = [];
  for (const input of inputs) {
    const ref = toReference(input);
    const key = identity(ref, opts);
    let r = done.get(key);
    if (!r) {
      r = await resolveModel(ref, opts);
      done.set(key, r);
    } else {
      r = { ...r, ref: ref.raw, reference: ref, downloadedBytes: 0 };
    }
    out.push(r);
  }
  return out;
}

function applyOverride(config: Record<string, unknown>, ref: ModelReference): Record<string, unknown> {
  return ref.overrideArchitecture ? { ...config, architectures: [ref.overrideArchitecture] } : config;
}

async function inspectFolder(dir: string, ref: ModelReference, source: 'local' | 'cache', revision: string | null): Promise<ModelInspection> {
  const refText = formatReference(ref);
  const layout = await weightsOnDisk(dir);
  if (!layout) throw new ModelError('no_weights', `Unable to find model files at ${dir} for ${refText}`, { file: dir });
  const config = await readConfig(dir, refText);
  const tensors = new Map<string, InspectedTensor>();
  const weightFiles: ModelInspection['weightFiles'] = [];
  for (const name of layout.files) {
    const file = join(dir, name);
    if (!existsSync(file)) throw new ModelError('missing_file', `${name} is missing from the model folder of ${refText}`, { file });
    const header = layout.format === 'safetensors' ? await readSafetensorsHeader(file) : null;
    weightFiles.push({ name, size: statSync(file).size, header });
    const list = header ? [...header.tensors.values()] : (await readBinFile(file)).tensors;
    for (const t of list) addTensor(tensors, { name: t.name, dtype: t.dtype, shape: t.shape, file: name }, refText);
  }
  return { ref: ref.raw, reference: ref, source, revision, dir, config: applyOverride(config, ref), weightFormat: layout.format, weightFiles, tensors, warnings: customCodeWarnings(config, refText) };
}

function addTensor(map: Map<string, InspectedTensor>, t: InspectedTensor, refText: string): void {
  const prior = map.get(t.name);
  if (prior) throw new ModelError('duplicate_tensor', `tensor appears in both ${prior.file} and ${t.file} of ${refText}`, { tensor: t.name });
  map.set(t.name, t);
}

/**
 * Reads every model's config.json and tensor table before any weight download: local and cached folders from
 * disk; hub models by fetching config/tokenizer files into the cache and weight headers by HTTP Range requests.
 */
export async function inspectModels(inputs: readonly (ModelReferenceInput | ModelReference)[], opts: ResolveOptions = {}): Promise<ModelInspection[]> {
  const s = hubSettings(opts);
  const out: ModelInspection[] = [];
  const done = new Map<string, ModelInspection>();
  for (const input of inputs) {
    const ref = toReference(input);
    const key = identity(ref, opts);
    const prior = done.get(key);
    if (prior) {
      out.push({ ...prior, ref: ref.raw, reference: ref, config: applyOverride(prior.config, ref) });
      continue;
    }
    const loc = locateReference(ref, opts.baseDir);
    let result: ModelInspection;
    if (loc.kind === 'local') {
      result = await inspectFolder(loc.dir, ref, 'local', ref.revision);
    } else {
      const got = await fetchHubModel(loc.repo, ref, s, 'meta');
      if (!got.snap) {
        result = await inspectFolder(got.dir, ref, 'cache', got.sha);
      } else {
        const refText = formatReference(ref);
        const config = await readConfig(got.dir, refText);
        const tensors = new Map<string, InspectedTensor>();
        const weightFiles: ModelInspection['weightFiles'] = [];
        for (const name of got.layout.files) {
          const rf = got.snap.files.get(name)!;
          const src = remoteRangeSource(got.snap, rf, s, refText);
          const header = got.layout.format === 'safetensors' ? await fetchRemoteSafetensorsHeader(src) : null;
          weightFiles.push({ name, size: rf.size, header });
          const list = header ? [...header.tensors.values()] : (await readBinTensors(src)).tensors;
          for (const t of list) addTensor(tensors, { name: t.name, dtype: t.dtype, shape: t.shape, file: name }, refText);
        }
        result = { ref: ref.raw, reference: ref, source: 'hub', revision: got.sha, dir: got.dir, config: applyOverride(config, ref), weightFormat: got.layout.format, weightFiles, tensors, warnings: customCodeWarnings(config, refText) };
      }
    }
    done.set(key, result);
    out.push(result);
  }
  return out;
}
