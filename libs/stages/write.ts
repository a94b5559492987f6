import { mkdir, readdir, readFile, rename, rm, stat, writeFile, copyFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForgeError } from '../errors';
import { Rng, gateRow, type GateTensor } from '../gates';
import { bf16BitsToF32, decodeFloats, encodeFloats, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, convertBytes, dtypeSize, type FloatDtype } from '../safetensors/dtype';
import { streamTensorBytes } from '../safetensors/reader';
import { indexJson, planShards, writeShard, type OutputTensorSpec } from '../safetensors/writer';
import { loadTokenizer, TOKENIZER_FILES } from '../tokenizer';
import type { MergePlan, PlanTensor, SourcePart } from '../plan/types';
import { planHash } from './assemble';

export const STAMP_FILE = '.moe-forge.json';
const CHUNK_BYTES = 16 << 20;

export interface WriteOptions {
  outPath: string;
  gates: GateTensor;
  recipeText: string;
  /** Base model folder whose tokenizer is copied. */
  tokenizerDir: string;
  copyTokenizer: boolean;
  writeRecipe?: boolean;
  overwrite: boolean;
  /** Extra files (name → text) written into the folder, e.g. the model card. */
  extraFiles?: Record<string, string>;
  log?: (line: string) => void;
}

export interface WriteResult {
  outPath: string;
  files: string[];
  shards: number;
  skipped: boolean;
  hash: string;
}

function roundTo(dtype: string, x: number): number {
  if (dtype === 'BF16') return bf16BitsToF32(f32ToBf16Bits(x));
  if (dtype === 'F16') return f16BitsToF32(f32ToF16Bits(x));
  return Math.fround(x);
}

/** A source tensor's bytes, chunk by chunk: raw when nothing changes, else noise, scale and cast per element. */
async function* sourceBytes(part: SourcePart, outDtype: string): AsyncGenerator<Buffer> {
  const loc = { ...part, name: part.tensor, begin: 0, end: part.byteLength };
  const transform = part.noise !== undefined || part.scale !== undefined;
  if (!transform) {
    for await (const chunk of streamTensorBytes(loc, CHUNK_BYTES, dtypeSize(part.dtype))) yield convertBytes(chunk, part.dtype, outDtype as FloatDtype);
    return;
  }
  const rng = part.noise ? new Rng(part.noise.seed, part.noise.stream) : null;
  const noiseScale = part.noise ? Math.fround(part.noise.scale) : 0;
  const scale = part.scale !== undefined ? Math.fround(part.scale) : 1;
  for await (const chunk of streamTensorBytes(loc, CHUNK_BYTES, dtypeSize(part.dtype))) {
    const v = decodeFloats(chunk, part.dtype);
    for (let i = 0; i < v.length; i++) {
      let x = v[i]!;
      // As the reference: noise in the source dtype, then residual_scale, then the output cast.
      if (rng) x = roundTo(part.dtype, x + noiseScale * roundTo(part.dtype, rng.normal()));
      if (part.scale !== undefined) x = roundTo(part.dtype, x * scale);
      v[i] = x;
    }
    yield encodeFloats(v, outDtype as FloatDtype);
  }
}

function tensorProducer(gates: GateTensor) {
  return async function* (t: PlanTensor): AsyncGenerator<Buffer> {
    for (const part of t.parts) {
      if (part.kind === 'source') yield* sourceBytes(part, t.dtype);
      else if (part.kind === 'gates') {
        for (const r of part.rows) yield encodeFloats(gateRow(gates, part.layer, r), t.dtype as FloatDtype);
      } else {
        yield Buffer.alloc(part.elements * dtypeSize(t.dtype));
      }
    }
  };
}

/** Copies the base tokenizer with pad = BOS (else EOS) and left padding, as the reference saves it (spec 5.4). */
async function writeTokenizer(srcDir: string, outDir: string): Promise<string[]> {
  const tok = await loadTokenizer(srcDir);
  const written: string[] = [];
  for (const f of TOKENIZER_FILES) {
    if (existsSync(join(srcDir, f))) {
      await copyFile(join(srcDir, f), join(outDir, f));
      written.push(f);
    }
  }
  const cfgPath = join(outDir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? JSON.parse(await readFile(cfgPath, 'utf8')) : {};
  cfg.pad_token = tok.padToken;
  cfg.padding_side = 'left';
  await writeFile(cfgPath, JSON.stringify(cfg, null, 2) + '\n');
  const stmPath = join(outDir, 'special_tokens_map.json');
  const stm = existsSync(stmPath) ? JSON.parse(await readFile(stmPath, 'utf8')) : {};
  for (const k of ['bos_token', 'eos_token', 'unk_token'] as const) if (stm[k] === undefined && typeof cfg[k] === 'string') stm[k] = cfg[k];
  stm.pad_token = tok.padToken;
  await writeFile(stmPath, JSON.stringify(stm, null, 2) + '\n');
  for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) if (!written.includes(f)) written.push(f);
  return written;
}

interface Stamp {
  tool: 'moe-forge';
  hash: string;
  files: Record<string, number>;
}

async function readStamp(dir: string): Promise<Stamp | null> {
  try {
    const s = JSON.parse(await readFile(join(dir, STAMP_FILE), 'utf8')) as Stamp;
    return s.tool === 'moe-forge' ? s : null;
  } catch {
    return null;
  }
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

/**
 * Stage 5: the model folder. Written into a temporary sibling and renamed into place when complete, so
 * a killed run never leaves a folder that looks finished; a folder we did not write is never replaced
 * without `overwrite`, and an unchanged plan over an intact folder is skipped.
 */
export async function runWrite(plan: MergePlan, opts: WriteOptions): Promise<WriteResult> {
  const out = opts.outPath;
  const hash = planHash(plan, { recipe: opts.recipeText, copyTokenizer: opts.copyTokenizer, writeRecipe: opts.writeRecipe, extra: opts.extraFiles ?? {}, gates: Buffer.from(opts.gates.data.buffer, opts.gates.data.byteOffset, opts.gates.data.byteLength).toString('base64') });
  let existing: Stamp | null = null;
  if (existsSync(out)) {
    const entries = await readdir(out);
    existing = await readStamp(out);
    if (entries.length > 0 && !existing && !opts.overwrite) {
      throw new ForgeError('output_exists', `output folder exists, is not empty and was not written by moe-forge; pass --overwrite to replace it`, { file: out });
    }
    if (existing && existing.hash === hash && (await intact(out, existing))) {
      opts.log?.(`output unchanged: ${out}`);
      return { outPath: out, files: Object.keys(existing.files), shards: Object.keys(existing.files).filter((f) => f.endsWith('.safetensors')).length, skipped: true, hash };
    }
  }
  const parent = dirname(out);
  await mkdir(parent, { recursive: true });
  const tmp = join(parent, `.${basename(out)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  try {
    const specs: OutputTensorSpec[] = plan.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
    const shards = planShards(specs, plan.maxShardBytes);
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    const produce = tensorProducer(opts.gates);
    for (const [i, s] of shards.entries()) {
      opts.log?.(`writing ${s.file} (${i + 1}/${shards.length}, ${s.tensors.length} tensors, ${s.bytes} bytes)`);
      await writeShard(join(tmp, s.file), s.tensors, (t) => produce(byName.get(t.name)!));
    }
    if (shards.length > 1) await writeFile(join(tmp, 'model.safetensors.index.json'), indexJson(shards));
    await writeFile(join(tmp, 'config.json'), JSON.stringify(plan.config, null, 2) + '\n');
    if (opts.copyTokenizer) await writeTokenizer(opts.tokenizerDir, tmp);
    if (opts.writeRecipe !== false) await writeFile(join(tmp, 'mergekit_moe_config.yml'), opts.recipeText);
    for (const [name, text] of Object.entries(opts.extraFiles ?? {})) await writeFile(join(tmp, name), text);
    const files: Record<string, number> = {};
    for (const f of (await readdir(tmp)).sort()) files[f] = (await stat(join(tmp, f))).size;
    await writeFile(join(tmp, STAMP_FILE), JSON.stringify({ tool: 'moe-forge', hash, files } satisfies Stamp, null, 2) + '\n');
    if (existsSync(out)) {
      const old = join(parent, `.${basename(out)}.old-${process.pid}-${randomBytes(4).toString('hex')}`);
      await rename(out, old);
      await rename(tmp, out);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(tmp, out);
    }
    return { outPath: out, files: Object.keys(files), shards: shards.length, skipped: false, hash };
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}
