import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import { FIXTURES } from './tmp';

export interface Manifest {
  files: string[];
  config_json: Record<string, unknown>;
  tensors: Record<string, { shape: number[]; dtype: string; sha256: string }>;
  gates_full: Record<string, number[][]>;
}

export function manifest(name: string): Manifest {
  return JSON.parse(readFileSync(join(FIXTURES, 'parity', name), 'utf8'));
}

const DT: Record<string, string> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };

/** Every non-router tensor bit-identical (sha256), routers within `gateTol`, same names, shapes and config keys. */
export async function assertMatchesManifest(outDir: string, m: Manifest, gateTol: number): Promise<void> {
  const w = await SafetensorsWeights.openFolder(outDir);
  assert.deepEqual(w.names().sort(), Object.keys(m.tensors).sort());
  for (const [name, t] of Object.entries(m.tensors)) {
    const loc = w.get(name);
    assert.deepEqual(loc.shape, t.shape, name);
    assert.equal(loc.dtype, DT[t.dtype], name);
    const bytes = await readTensorBytes(loc);
    if (m.gates_full[name]) {
      const got = decodeFloats(bytes, loc.dtype);
      const want = m.gates_full[name]!.flat();
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      assert.ok(worst <= gateTol, `${name}: router differs by ${worst} > ${gateTol}`);
    } else {
      assert.equal(createHash('sha256').update(bytes).digest('hex'), t.sha256, `${name} is not bit-identical`);
    }
  }
  const cfg = JSON.parse(readFileSync(join(outDir, 'config.json'), 'utf8'));
  // Keys whose presence depends on the transformers version that serialised the reference (4.x vs 5.x):
  // compared when both sides have them. Every architecture key must match exactly, both ways.
  const versionKeys = new Set(['transformers_version', 'rope_theta', 'rope_scaling', 'pad_token_id']);
  for (const k of new Set([...Object.keys(cfg), ...Object.keys(m.config_json)])) {
    if (versionKeys.has(k) && (!(k in cfg) || !(k in m.config_json))) continue;
    if (k !== 'transformers_version') assert.deepEqual(cfg[k], m.config_json[k], `config.json key ${k}`);
  }
  // Weight files follow the shard order (grouped by default, so they differ from the reference's single file).
  for (const f of m.files.filter((f) => !isWeightFile(f))) assert.ok(readFileSync(join(outDir, f)), `output has ${f}`);
}

export const isWeightFile = (f: string) => f.endsWith('.safetensors') || f === 'model.safetensors.index.json';

/** Weight files of an output folder, and which tensors each holds (through the index when there is one). */
export function weightSplit(outDir: string): Record<string, string[]> {
  const files = readdirSync(outDir).filter((f) => f.endsWith('.safetensors')).sort();
  if (!existsSync(join(outDir, 'model.safetensors.index.json'))) return Object.fromEntries(files.map((f) => [f, tensorNames(join(outDir, f))]));
  const map = JSON.parse(readFileSync(join(outDir, 'model.safetensors.index.json'), 'utf8')).weight_map as Record<string, string>;
  const out: Record<string, string[]> = Object.fromEntries(files.map((f) => [f, []]));
  for (const [name, f] of Object.entries(map)) (out[f] ??= []).push(name);
  for (const f of files) assert.deepEqual([...out[f]!].sort(), tensorNames(join(outDir, f)).sort(), `${f}: the index and the shard's header agree`);
  return out;
}

function tensorNames(file: string): string[] {
  const b = readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  return Object.keys(JSON.parse(b.subarray(8, 8 + n).toString('utf8'))).filter((k) => k !== '__metadata__');
}
