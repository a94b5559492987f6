import { link, mkdir, readdir, readFile, rm, stat, writeFile, copyFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { ForgeError } from '../errors';
import { gateRow, type GateTensor } from '../gates';
import { noiseApplier, scaleBytes, TorchDrawSeeker } from '../noise';
import { encodeFloats, convertBytes, dtypeSize, firstNonFinite, narrowsRange, type FloatDtype, type WeightDtype } from '../safetensors';
import { streamTensorBytes } from '../safetensors';
import { ChunkPool, type ShardPlan } from '../safetensors';
import { FileRange, writeShard, type TensorChunk } from '../safetensors';
import { COMPANION_FILES } from '../resolve';
import { jsonText } from '../json';
import type { MergePlan, PlanTensor, SourcePart } from '../plan';
import { planHash } from './assemble';
import { byteFraction, type Progress } from '../util';
import { GgufPass, GgufPassSet, ggufParts, ggufPassKey, vocabKeys, type GgufKv, type GgufOutType, type GgufPart } from '../gguf';
import { aheadShards, shardHash, withContentIds, companionEntries, ggufBytes, ggufKey, ggufUnchanged, ggufPlan, ggufSource, holdsGates, indexEntry, outputManifest, shardsOf, STREAM_NOISE_DRAWS, tokenizerHashes, writeCompanion, writeGgufFile, type CompanionInputs } from './write-manifest';
import { makeWorkFolder, mapLimit, WORK_MARKER, writeWhole } from '../util';
import type { RoutingReport } from '../report';
import { checkFreeSpace, checkOutputPath, checkOwner, lockOutput, ownerField, contentEntries, inPlaceTempName, isMountPoint, noSpaceError, readStampSync, recoverStaleTemporaries, replaceInPlace, STAMP_FILE, swapIntoPlace, tempName, userEntries, type OutputInput, type Stamp } from '../output-folder';

export { STAMP_FILE };
const CHUNK_BYTES = 16 << 20;
/**
 * A cast alone reads, casts and hands over chunks this small: a few of them in flight stay in the CPU's cache
 * between the read, the cast and the write, where 16 MiB ones go through main memory each time. Noise and scale
 * keep CHUNK_BYTES.
 */
const CAST_CHUNK_BYTES = 1 << 20;

export interface WriteOptions {
  outPath: string;
  gates: GateTensor;
  recipeText: string;
  /** Base model folder whose tokenizer, chat template and generation_config.json are copied. */
  tokenizerDir: string;
  copyTokenizer: boolean;
  /** mergekit_moe_config.yml and the README model card (the reference's --write-model-card). */
  writeRecipe?: boolean;
  overwrite: boolean;
  /** The recipe file, which the output path must not be or contain (the plan names the model folders). */
  recipeFile?: string;
  /** Other inputs and the cache, which the output path must not be or contain either. */
  evalPrompts?: string;
  cacheDir?: string;
  log?: (line: string) => void;
  /** Said when another run holds the output folder and this one waits. */
  warn?: (line: string) => void;
  /** Per-shard decisions with their hashes. */
  debug?: (line: string) => void;
  progress?: Progress;
  /** The routing report: routing.html beside the model card, and a Routing section in it. */
  routing?: { report: RoutingReport; html: string };
  /** Files of the existing output known to have changed since they were written (rewritten, never kept). */
  suspect?: string[];
  /** Keep nothing of the existing output: every shard and file is written again. */
  recompute?: boolean;
  /** Also write OUT/model-TYPE.gguf (llama.cpp's format). */
  gguf?: GgufOutType;
  /** Write the GGUF instead of the safetensors shards (and their index). */
  ggufOnly?: boolean;
  /** Split the GGUF into files of at most this many bytes, the routers and metadata in the first (ggufParts). */
  ggufSplitBytes?: number;
}

export interface WriteResult {
  outPath: string;
  files: string[];
  shards: number;
  /** Shards written now, and shards moved over unchanged from the previous output. */
  written: number;
  kept: number;
  skipped: boolean;
  hash: string;
}

/**
 * A source tensor's bytes, chunk by chunk: raw when nothing changes, else noise, scale and cast per element.
 * Every buffer is the pool's; each yielded chunk passes to the writer, the rest go back here. With `ranges`,
 * bytes that go out unchanged come as FileRanges of at most a chunk, which writeShard copies itself.
 */
async function* sourceBytes(name: string, part: SourcePart, outDtype: WeightDtype, seeker: () => TorchDrawSeeker, pool: ChunkPool, ranges = false, noiseThreads?: number): AsyncGenerator<TensorChunk> {
  const loc = { ...part, name: part.tensor, begin: 0, end: part.byteLength };
  const transform = part.noise !== undefined || part.scale !== undefined;
  if (ranges && !transform && part.dtype === outDtype) {
    for (let at = 0; at < part.byteLength; at += CHUNK_BYTES) yield new FileRange(part.file, part.offset + at, Math.min(CHUNK_BYTES, part.byteLength - at), name);
    return;
  }
  if (outDtype === 'F64') {
    // No output dtype keeps a float64 source as it is. Nothing casts to float64 (this crashed inside the cast before).
    if (transform || part.dtype !== 'F64') throw new ForgeError('unsupported_dtype', `${transform ? 'noise_scale or residual_scale on' : 'a cast of'} a ${part.dtype} tensor to float64 is not supported: set the output dtype (dtype: in the recipe)`, { tensor: name });
    const size = dtypeSize('F64');
    yield* streamTensorBytes(loc, Math.floor(CHUNK_BYTES / size) * size, size, pool);
    return;
  }
  const out = outDtype;
  // float64 sources are noised and scaled in float32 (as before: the transforms work on float32 values).
  const dt: FloatDtype = !transform ? out : part.dtype === 'BF16' || part.dtype === 'F16' ? part.dtype : 'F32';
  // Read as many values as fit a chunk in the widest form they take, so casts stay inside pool buffers.
  const size = dtypeSize(part.dtype);
  const noise = transform ? noiseApplier(dt === part.dtype ? part : { ...part, dtype: dt }, seeker, noiseThreads) : null;
  // Noise from the generator thread comes in batches: a chunk waits for its batch without blocking this thread.
  const values = Math.min(noise?.batch ?? Infinity, Math.floor((transform ? CHUNK_BYTES : CAST_CHUNK_BYTES) / Math.max(size, dtypeSize(dt), dtypeSize(out))));
  const scale = part.scale !== undefined ? Math.fround(part.scale) : 1;
  const step = (from: Buffer, fromDtype: string, to: FloatDtype): Buffer => {
    if (fromDtype === to) return from;
    const inPlace = pool.castInPlace(from, fromDtype, to);
    if (inPlace) return inPlace;
    const next = convertBytes(from, fromDtype, to, pool);
    pool.give(from);
    return next;
  };
  // A scale, noise or a cast to a narrower range can make inf out of finite weights: such chunks are checked.
  const check = transform || narrowsRange(part.dtype, out);
  const checked = (chunk: Buffer): Buffer => {
    if (check && firstNonFinite(chunk, out) >= 0) {
      const why = [part.noise ? `noise_scale ${part.noise.scale}` : '', part.scale !== undefined ? `residual_scale ${part.scale}` : '', `the cast from ${part.dtype}`].filter(Boolean).join(', ');
      throw new ForgeError('not_finite', `values beyond ${out}'s range (inf or NaN) after ${why}; the model would be broken: lower the scale, or write a wider dtype`, { tensor: name });
    }
    return chunk;
  };
  try {
    for await (const raw of streamTensorBytes(loc, values * size, size, pool)) {
      if (!transform) {
        yield checked(step(raw, part.dtype, out));
        continue;
      }
      // As the reference: noise in the source dtype, then residual_scale, then the output cast; in place.
      const src = step(raw, part.dtype, dt);
      if (noise) {
        await noise.ready(src.length / dtypeSize(dt));
        noise.applyBytes(src, true);
      }
      if (part.scale !== undefined) scaleBytes(src, dt, scale, true);
      yield checked(step(src, dt, out));
    }
  } finally {
    noise?.close(); // the generator thread is free for the next tensor, also when this one is abandoned
  }
}

/** How a producer works: `ranges` (for writeShard only), `noiseThreads` (asked at each tensor) for noiseApplier. */
interface ProducerOptions {
  ranges?: boolean;
  noiseThreads?: () => number;
}

/**
 * Every planned tensor's bytes. With `{ ranges: true }` (for writeShard only) source bytes that go out unchanged
 * come as FileRanges; without it every chunk is a Buffer.
 */
export function tensorProducer(gates: GateTensor | null, pool: ChunkPool, opts?: ProducerOptions & { ranges?: false }): (t: PlanTensor) => AsyncGenerator<Buffer>;
export function tensorProducer(gates: GateTensor | null, pool: ChunkPool, opts: ProducerOptions & { ranges: true }): (t: PlanTensor) => AsyncGenerator<TensorChunk>;
export function tensorProducer(gates: GateTensor | null, pool: ChunkPool, opts: ProducerOptions = {}) {
  // One seeker per write, so tensors written out of the reference's draw order seek from saved states.
  const seekers = new Map<number, TorchDrawSeeker>();
  const seeker = (seed: number) => () => seekers.get(seed) ?? seekers.set(seed, new TorchDrawSeeker(seed)).get(seed)!;
  return async function* (t: PlanTensor): AsyncGenerator<TensorChunk> {
    for (const part of t.parts) {
      if (part.kind === 'source') yield* sourceBytes(t.name, part, t.dtype, seeker(part.noise?.seed ?? 0), pool, opts.ranges === true, opts.noiseThreads?.());
      else if (part.kind === 'gates') {
        // Routers are planned in the output dtype or float32 (architectures/common.ts router()).
        if (t.dtype === 'F64') throw new Error(`internal: ${t.name} planned as a float64 router`);
        for (const r of part.rows) yield encodeFloats(gateRow(gates!, part.layer, r), t.dtype);
      } else {
        yield Buffer.alloc(part.elements * dtypeSize(t.dtype));
      }
    }
  };
}

/** The base's chat template and generation settings, which the base's content id does not cover (small files). */
async function companionHashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of COMPANION_FILES) {
    if (existsSync(join(dir, f))) out[f] = createHash('sha256').update(await readFile(join(dir, f))).digest('hex');
  }
  return out;
}

async function intact(dir: string, stamp: Stamp): Promise<boolean> {
  for (const [f, size] of Object.entries(stamp.files)) {
    try {
      if ((await stat(join(dir, f))).size !== size) return false;
    } catch {
      return false;
    }
  }
  return true;
}

function inTheWay(names: string[], out: string): void {
  if (names.length === 0) return;
  throw new ForgeError('output_exists', `files you added to the output folder are in the way of this build: ${names.join(', ')}; move them away, or pass --overwrite to replace them`, { file: out });
}

/** What a write learns only once the forward pass is done: the routers, the final plan (its warnings), the report. */
export interface LateInputs {
  plan: MergePlan;
  gates: GateTensor;
  routing?: { report: RoutingReport; html: string };
}

/**
 * Stage 5: the model folder. Written into a temporary sibling and renamed into place when complete, so
 * a killed run never leaves a folder that looks finished; a folder we did not write is never replaced
 * without `overwrite`, files a user added to one we wrote move into the new one, an output path that is
 * or holds an input is refused, a symlinked one is written through, and an unchanged plan over an intact
 * folder is skipped.
 */
export async function runWrite(plan: MergePlan, opts: WriteOptions): Promise<WriteResult> {
  const { gates, routing, ...rest } = opts;
  return writeOutput(plan, Promise.resolve({ plan, gates, routing }), rest, false);
}

/**
 * runWrite while the routers are still being computed: the shards that do not hold them (base and experts,
 * most of the bytes) are written into the temporary folder now, from `early` (the plan without the gates'
 * warnings); the router shards, the stamp and the swap wait for `late`. If `late` fails, the temporary folder
 * goes and its error is thrown; nothing is moved into place before everything is written. A GGUF is written in
 * the same pass: each tensor's bytes, as produced for its shard, also go to their place in the GGUF.
 */
export async function writeOutput(early: MergePlan, late: Promise<LateInputs>, opts: Omit<WriteOptions, 'gates' | 'routing'>, writeAhead = true, ids?: Promise<ReadonlyMap<string, string> | null>): Promise<WriteResult> {
  // Fails with the stage that hashes the models, which `late` reports.
  ids?.catch(() => undefined);
  let lateFailed: { error: unknown } | null = null;
  // Settled: the forward pass is over (the noise generator may take both cores).
  let lateSettled = false;
  late.then(
    () => (lateSettled = true),
    (error: unknown) => {
      lateFailed = { error };
      lateSettled = true;
    },
  );
  const inputs: OutputInput[] = [
    ...early.models.map((m) => ({ label: `model folder of ${m.ref}`, path: m.dir })),
    ...(opts.recipeFile ? [{ label: 'recipe', path: opts.recipeFile }] : []),
    ...(opts.evalPrompts ? [{ label: 'eval prompts', path: opts.evalPrompts }] : []),
  ];
  // Where the output really goes: a symlinked output path is written through and the link kept.
  const out = checkOutputPath(opts.outPath, inputs, { caches: opts.cacheDir ? [{ path: opts.cacheDir, label: 'prompt-state cache' }] : [] });
  await mkdir(dirname(out), { recursive: true });
  // One writer at a time per folder: a second run waits, then sees the first one's stamp (and its owner).
  const unlock = await lockOutput(out, opts.warn ?? opts.log);
  try {
    return await writeLocked();
  } finally {
    await unlock();
  }

  async function writeLocked(): Promise<WriteResult> {
    recoverStaleTemporaries(out, opts.log);
    let existing: Stamp | null = null;
    let keep: string[] = [];
    // A volume mounted at the output path cannot be renamed: its files are replaced inside it.
    const inPlace = existsSync(out) && isMountPoint(out);
    if (existsSync(out)) {
      const entries = contentEntries(out);
      existing = readStampSync(out);
      checkOwner(opts.outPath, existing, opts.recipeFile, opts.overwrite, opts.log);
      if (entries.length > 0 && !existing && !opts.overwrite) {
        throw new ForgeError('output_exists', `output folder exists, is not empty and was not written by moe-forge; pass --overwrite to replace it`, { file: opts.outPath });
      }
      // Files the user added to a folder we wrote (notes, checkpoints) move into the new folder.
      if (existing) keep = userEntries(out, existing);
    }
    // Files never kept as written: those found changed, or every one of them with --recompute.
    const suspect = opts.recompute && existing ? Object.keys(existing.files) : opts.suspect ?? [];
    const ggufOnly = opts.gguf !== undefined && opts.ggufOnly === true;
    // An early plan whose models are still being hashed (`ids`) writes ahead only where no shard of a previous
    // folder could be kept (their keys need the content ids) and no GGUF is written; its shards' keys are taken
    // once the ids are known. Otherwise the ids are waited for here.
    const idsLater = ids && !existing?.shards && !opts.gguf ? ids : null;
    if (ids && !idsLater) {
      const known = await ids;
      // Models changed since the early plan's headers were read: nothing is written from it.
      if (!known) writeAhead = false;
      else early = withContentIds(early, known);
    }
    // A GGUF llama.cpp could not take is refused now, before any work (names and shapes do not change later).
    const earlyShards = shardsOf(early);
    const earlyLayout = opts.gguf ? ggufPlan(early, earlyShards, opts.gguf) : null;
    const earlyParts = earlyLayout ? ggufParts(earlyLayout, opts.gguf!, opts.ggufSplitBytes) : [];
    // Written ahead: shards without routers whose content the existing folder does not already hold.
    const ahead = writeAhead && !ggufOnly ? aheadShards(early, existing, suspect) : [];
    // The manifest's files other than the shards (their producers need the final plan, their names do not).
    const companionInputs = (plan: MergePlan, routing: LateInputs['routing'] | undefined, withRouting: boolean): CompanionInputs => ({ plan, recipeText: opts.recipeText, tokenizerDir: opts.tokenizerDir, copyTokenizer: opts.copyTokenizer, writeRecipe: opts.writeRecipe, routing, withRouting });
    /** The files the early plan names (no routing page: that needs the report). */
    const earlyFiles = () => {
      const shards = ggufOnly ? [] : earlyShards;
      return [...shards.map((s) => s.file), ...indexEntry(shards).flatMap((e) => e.files), ...companionEntries(companionInputs(early, undefined, false)).flatMap((e) => e.files), ...earlyParts.map((p) => p.file)];
    };
    const disk = inPlace ? out : dirname(out);
    const tag = randomBytes(4).toString('hex');
    const tmp = inPlace ? inPlaceTempName(out, tag) : tempName(out, 'tmp', tag);
    let forget: (() => void) | null = null;
    let needed = 0;
    const written = new Map<string, string>(); // shard file -> content hash, written ahead
    const pool = new ChunkPool(CHUNK_BYTES);
    // The GGUF files written in the same pass as the shards (by file name), and the config.json text their
    // tokenizer keys were read with.
    const passes = new Map<string, { gguf: GgufPass; vocab: GgufKv[]; config: string }>();
    const dropPass = async (file?: string) => {
      for (const [f, p] of [...passes]) {
        if (file !== undefined && f !== file) continue;
        passes.delete(f);
        await p.gguf.abort();
        await rm(p.gguf.file, { force: true });
      }
    };
    /**
     * A GGUF file's tokenizer keys (the first file's) are read from config.json and the tokenizer files, written
     * into the folder first. With `unchanged` (tensors the previous file of its name holds at the same places),
     * it starts as a copy of that file.
     */
    const openPass = async (plan: MergePlan, part: GgufPart, type: GgufOutType, companionsWritten: boolean, unchanged?: string[]) => {
      if (!companionsWritten) {
        const c = companionInputs(plan, undefined, false);
        for (const e of companionEntries(c)) if (e.producer === 'config' || e.producer === 'tokenizer') await writeCompanion(e, tmp, c, []);
      }
      const { file, layout } = part;
      const vocab = part.index === 0 ? await vocabKeys(tmp) : [];
      const prior = join(out, file);
      const intactPrior = unchanged && existing && (await stat(prior).then((st) => st.size === existing!.files[file], () => false));
      const copied = intactPrior ? await GgufPass.fromPrevious(join(tmp, file), prior, layout, vocab, unchanged, pool) : null;
      if (copied) opts.log?.(`writing ${file} (${layout.tensors.length} tensors, ${type}): the previous one's bytes of ${unchanged!.length} unchanged tensors, the rest in the same pass as the shards`);
      else opts.log?.(`writing ${file} (${layout.tensors.length} tensors, ${type}) in the same pass as the shards`);
      const pass = { gguf: copied ?? (await GgufPass.open(join(tmp, file), layout, vocab, pool)), vocab, config: configText(plan) };
      passes.set(file, pass);
      return pass;
    };
    try {
      if (ahead.length > 0) {
        // Names this build will write, known now: a file the user added under one of them stops the build before any work.
        if (!opts.overwrite) {
          const planned = earlyFiles();
          inTheWay(keep.filter((e) => planned.includes(e)), opts.outPath);
        }
        const earlyByName = new Map(early.tensors.map((t) => [t.name, t]));
        // The shards written now and the router shards (whose content is not known yet), and the GGUF.
        needed = earlyShards.filter((s) => ahead.some((x) => x.shard.file === s.file) || holdsGates(s.tensors.map((t) => earlyByName.get(t.name)!))).reduce((a, s) => a + s.bytes, 0) + (earlyLayout ? ggufBytes(earlyLayout) : 0) + (1 << 20);
        checkFreeSpace(disk, needed);
        forget = await makeWorkFolder(tmp);
        // The shards the previous folder holds already (no routers in them) keep their tensors' GGUF bytes too.
        const keptEarly = earlyShards.filter((s) => !holdsGates(s.tensors.map((t) => earlyByName.get(t.name)!)) && !ahead.some((x) => x.shard.file === s.file)).map((s) => s.file);
        // Each GGUF file opened now but a split's file without the routers (ggufParts puts them in the first) that
        // the previous folder holds under the key it has now (kept later, with the shards).
        const earlyKeys: Record<string, string> = { ...existing?.shards };
        for (const a of ahead) earlyKeys[a.shard.file] = a.key;
        const tokenizer = earlyParts.length > 0 ? await tokenizerHashes(opts.tokenizerDir) : [];
        for (const part of earlyParts) {
          if (part.index > 0 && !suspect.includes(part.file) && existing?.shards?.[part.file] === ggufKey(early, earlyShards, earlyKeys, opts.gguf!, tokenizer, part)) continue;
          const unchanged = ggufUnchanged(early, earlyShards, existing, suspect, opts.gguf!, tokenizer, keptEarly, part);
          await openPass(early, part, opts.gguf!, passes.size > 0, unchanged ?? undefined);
        }
        const gguf = passes.size > 0 ? new GgufPassSet([...passes.values()].map((p) => p.gguf)) : null;
        // Unchanged source bytes go to the shard as file ranges (copied without a buffer), unless the GGUF
        // pass needs them as bytes too.
        // While the routers are computed the forward pass has the cores: one noise generator thread until it ends.
        const noiseThreads = () => (lateSettled ? Infinity : 1);
        const produce = tensorProducer(null, pool, { noiseThreads });
        const produceRanges = tensorProducer(null, pool, { ranges: true, noiseThreads });
        // Two shards at a time where no GGUF pass takes the tensors in order, a noised one beside one that is
        // copied: the noise is generated on another thread while this one copies, and the disk has two streams.
        const noised = (s: ShardPlan) => s.tensors.some((t) => earlyByName.get(t.name)!.parts.some((p) => p.kind === 'source' && p.noise !== undefined));
        await mapLimit(gguf ? ahead : interleave(ahead.filter((x) => noised(x.shard)), ahead.filter((x) => !noised(x.shard))), gguf ? 1 : 2, async ({ shard: s, key }, _, besideFailed) => {
          opts.log?.(`writing ${s.file} (${s.tensors.length} tensors, ${s.bytes} bytes) while the routers are computed`);
          // The forward pass failed: stop now rather than after gigabytes nobody will keep.
          // Nor after the shard written beside this one failed.
          const unlessFailed = async function* (chunks: AsyncIterable<TensorChunk>): AsyncGenerator<TensorChunk> {
            for await (const c of chunks) {
              if (lateFailed) throw lateFailed.error;
              if (besideFailed.aborted) throw besideFailed.reason;
              yield c;
            }
          };
          const tensor = (name: string) => earlyByName.get(name)!;
          await writeShard(join(tmp, s.file), s.tensors, (t) => unlessFailed(gguf ? gguf.tee(tensor(t.name), produce(tensor(t.name))) : produceRanges(tensor(t.name))), { pool });
          written.set(s.file, key);
        });
        if (idsLater) {
          // The same bytes under the keys of their sources' content: what the final plan's shards are compared with.
          const known = await idsLater;
          // A model saved over since its header was read: the shards written from it match no final key, and are written again.
          const plan = known ? withContentIds(early, known) : null;
          for (const { shard: s } of ahead) written.set(s.file, plan ? shardHash(plan, s.tensors.map((t) => earlyByName.get(t.name)!), null) : 'stale');
        }
      }
      const { plan, gates, routing } = await late;
      const hash = planHash(plan, {
        noiseDraws: STREAM_NOISE_DRAWS,
        recipe: opts.recipeText,
        copyTokenizer: opts.copyTokenizer,
        writeRecipe: opts.writeRecipe,
        // By their digest: as base64 a 7B merge's gates were 1.4 MB of text to stringify and hash.
        gates: createHash('sha256').update(new Uint8Array(gates.data.buffer, gates.data.byteOffset, gates.data.byteLength)).digest('hex'),
        companions: await companionHashes(opts.tokenizerDir),
        ...(routing ? { routing: createHash('sha256').update(routing.html).digest('hex') } : {}),
        // Only when asked for, so the folders written without a GGUF (or an unsplit one) keep their hash.
        ...(opts.gguf ? { gguf: opts.gguf, ggufOnly } : {}),
        ...(opts.gguf && opts.ggufSplitBytes !== undefined ? { ggufSplitBytes: opts.ggufSplitBytes } : {}),
      });
      if (existing && existing.hash === hash && suspect.length === 0 && (await intact(out, existing))) {
        opts.log?.(`output unchanged: ${opts.outPath}`);
        // Handed over (--overwrite, or its recipe gone) with nothing to write: the stamp alone names the new owner.
        const owner = opts.recipeFile ? ownerField(out, opts.recipeFile) : undefined;
        if (owner !== undefined && existing.recipe !== owner) await writeWhole(join(out, STAMP_FILE), jsonText({ ...existing, recipe: owner }));
        await dropPass();
        if (forget) {
          forget();
          await rm(tmp, { recursive: true, force: true });
        }
        const n = Object.keys(existing.files).filter((f) => f.endsWith('.safetensors')).length;
        return { outPath: opts.outPath, files: Object.keys(existing.files), shards: n, written: 0, kept: n, skipped: true, hash };
      }
      return await writeRest(plan, gates, routing, hash);
    } catch (e) {
      await dropPass().catch(() => undefined);
      forget?.();
      await rm(tmp, { recursive: true, force: true });
      throw noSpaceError(e, disk, needed) ?? e;
    }

    async function writeRest(plan: MergePlan, gates: GateTensor, routing: LateInputs['routing'], hash: string): Promise<WriteResult> {
      const m = await outputManifest({ plan, gates, routing, recipeText: opts.recipeText, tokenizerDir: opts.tokenizerDir, copyTokenizer: opts.copyTokenizer, writeRecipe: opts.writeRecipe, gguf: opts.gguf, ggufOnly, ggufSplitBytes: opts.ggufSplitBytes, previous: existing, suspect, ahead: written });
      if (m.gguf) for (const w of m.gguf.layout.warnings) (opts.warn ?? opts.log)?.(w);
      const { entries, shards } = m;
      const byName = new Map(plan.tensors.map((t) => [t.name, t]));
      // Names this build will write, known now: a file the user added under one of them stops the build before any work.
      const planned = entries.flatMap((e) => e.files);
      if (!opts.overwrite) inTheWay(keep.filter((e) => planned.includes(e)), opts.outPath);
      // What is left to write (shards written ahead are on the disk already).
      needed = entries.reduce((a, e) => a + (e.bytes === undefined || e.action !== 'write' ? 0 : e.bytes), 0) + (1 << 20);
      checkFreeSpace(disk, needed);
      if (!forget) {
        forget = await makeWorkFolder(tmp);
      }
      // The small files first: the GGUF's header reads config.json and the tokenizer files.
      const c = companionInputs(plan, routing, routing !== undefined);
      for (const e of entries) if (e.producer !== 'shard' && e.producer !== 'gguf') await writeCompanion(e, tmp, c, shards);
      /** An unchanged keyed file of the old folder: hard-linked (the old folder stays whole until the swap). */
      const keepPrior = async (file: string): Promise<boolean> => {
        const prior = existing && entries.some((e) => e.files[0] === file && e.action === 'keep') ? join(out, file) : null;
        if (!prior || !(await stat(prior).then((st) => st.size === existing!.files[file], () => false))) return false;
        await link(prior, join(tmp, file)).catch(() => copyFile(prior, join(tmp, file)));
        opts.log?.(`kept ${file} (unchanged)`);
        return true;
      };
      const g = m.gguf;
      const writing: GgufPass[] = [];
      if (g && ggufOnly) await dropPass();
      // Passes opened for files the final plan does not have (another split) go.
      for (const f of [...passes.keys()]) if (!g?.parts.some((p) => p.part.file === f)) await dropPass(f);
      for (const { part, unchanged } of g && !ggufOnly ? g.parts : []) {
        if (entries.find((e) => e.files[0] === part.file)!.action === 'keep') {
          await dropPass(part.file);
          if (await keepPrior(part.file)) continue;
        }
        // A pass opened while the routers were computed holds if the final plan gives the same header and places.
        let pass = passes.get(part.file);
        const held = pass && pass.config === configText(plan) ? ggufPassKey(part.layout, pass.vocab) : null;
        if (pass && !(held && held.header.equals(pass.gguf.key.header) && held.segments === pass.gguf.key.segments)) {
          opts.debug?.(`${part.file}: the final plan changed its layout: written again`);
          await dropPass(part.file);
          pass = undefined;
        }
        writing.push((pass ?? (await openPass(plan, part, g!.type, true, unchanged))).gguf);
      }
      const gguf = writing.length > 0 ? new GgufPassSet(writing) : null;
      const produce = tensorProducer(gates, pool);
      const produceRanges = tensorProducer(gates, pool, { ranges: true });
      const shardEntries = entries.filter((e) => e.producer === 'shard');
      const total = shardEntries.reduce((a, e) => a + e.bytes!, 0);
      const started = Date.now();
      let done = 0;
      const counted = async function* (chunks: AsyncIterable<TensorChunk>): AsyncGenerator<TensorChunk> {
        for await (const c of chunks) {
          done += c.length;
          const secs = Math.max((Date.now() - started) / 1000, 1e-3);
          opts.progress?.update(done, total, `${byteFraction(done, total)}, ${(done / 1e6 / secs).toFixed(0)} MB/s`);
          yield c;
        }
      };
      let kept = 0;
      for (const [i, e] of shardEntries.entries()) {
        const s = shards[i]!;
        const sh = e.key!;
        const was = existing?.shards?.[s.file];
        opts.debug?.(`${s.file}: ${s.tensors.length} tensors, ${s.bytes} bytes, content ${sh.slice(0, 12)}; ${was === undefined ? 'no shard of that name before' : was === sh ? 'the existing shard has the same content' : `the existing shard had ${was.slice(0, 12)}`}`);
        if (e.action === 'ahead') continue; // written while the routers were computed
        if (written.has(s.file)) await rm(join(tmp, s.file), { force: true }); // the final plan differs: rewrite it
        if (e.action === 'keep' && (await keepPrior(s.file))) {
          kept++;
          continue;
        }
        opts.log?.(`writing ${s.file} (${i + 1}/${shards.length}, ${s.tensors.length} tensors, ${s.bytes} bytes)`);
        const tensor = (name: string) => byName.get(name)!;
        await writeShard(join(tmp, s.file), s.tensors, (t) => counted(gguf ? gguf.tee(tensor(t.name), produce(tensor(t.name))) : produceRanges(tensor(t.name))), { pool });
      }
      opts.progress?.end();
      if (gguf) {
        // What this run did not produce (kept shards) is read back from them; the rest went in with the shards.
        const missing = gguf.missing();
        if (missing.length > 0) await gguf.fill(await ggufSource(tmp, shards, false, () => produce, pool));
        await gguf.finish();
        passes.clear();
        if (missing.length > 0) opts.log?.(`${gguf.passes.map((p) => basename(p.file)).join(', ')}: ${missing.length} tensors read back from the kept shards`);
      } else if (g && ggufOnly) {
        const source = await ggufSource(tmp, shards, true, () => produce, pool);
        // A split's unchanged files are kept here too: a prompt edit writes the routers' file alone.
        for (const { part } of g.parts) {
          if (await keepPrior(part.file)) continue;
          await writeGgufFile(tmp, part, g.type, source, pool, opts.log);
        }
      }
      const files: Record<string, number> = {};
      for (const f of (await readdir(tmp)).sort()) if (f !== WORK_MARKER) files[f] = (await stat(join(tmp, f))).size;
      // A file the user added under a name we now write would be lost: stop and name it, unless --overwrite.
      if (!opts.overwrite) inTheWay(keep.filter((e) => e in files), opts.outPath);
      const stamp: Stamp = { tool: 'moe-forge', hash, files, shards: m.keys, ...(opts.recipeFile ? { recipe: ownerField(out, opts.recipeFile) } : {}) };
      await writeFile(join(tmp, STAMP_FILE), jsonText(stamp));
      if (inPlace) replaceInPlace(tmp, out, existing, stamp);
      forget!();
      if (!inPlace) swapIntoPlace(tmp, out, tag, keep.filter((e) => !(e in files)));
      if (keep.length > 0) opts.log?.(`kept files you added: ${keep.join(', ')}`);
      const nShards = shardEntries.length;
      return { outPath: opts.outPath, files: Object.keys(files), shards: nShards, written: nShards - kept, kept, skipped: false, hash };
    }
  }
}

/** config.json's text, which the GGUF's tokenizer keys were read with. */
const configText = (plan: MergePlan) => jsonText(plan.config, { literals: plan.configNumbers });

/** a[0], b[0], a[1], b[1], ... then the rest of the longer list. */
function interleave<T>(a: T[], b: T[]): T[] {
  const out: T[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i < a.length) out.push(a[i]!);
    if (i < b.length) out.push(b[i]!);
  }
  return out;
}
