import { mkdir, writeFile } from 'node:fs/promises';
import { GATES_INFO_SCHEMA, missingStageFile, readStageJson, refuseStageFile, writeStageFile } from '../stage-files';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { degenerateLayers, drawnGates, hiddenRows, newGates, normalize, type GateTensor, type HiddenReduction, type PromptStates } from '../gates';
import { GATE_MODES, type GateMode } from '../gates';
import { encodeHeader } from '../safetensors';
import { decodeFloats, firstNonFinite as firstNonFiniteBits } from '../safetensors';
import { readTensorBytes, SafetensorsWeights } from '../safetensors';
import type { MergeContext } from './context';
import { expectedPromptStates, readPromptStates } from './embed-prompts';
import { ModelError } from '../errors';
import { fitGates, unitTensor } from './fit-states';

export interface GatesInfo {
  layers: number;
  experts: number;
  hidden: number;
  gateMode: GateMode;
  conditionNumbers: number[];
  warnings: string[];
  /** Random modes: the gates are drawn by assemble-experts from its seed. */
  deferred?: boolean;
}

/** Stage 3: the gate tensor G [layers, gated experts, hidden] and the degenerate-router check. */
export async function runBuildGates(merge: MergeContext, statesDir: string, outDir: string): Promise<{ gates: GateTensor | null; info: GatesInfo }> {
  const { ctx } = merge;
  const L = ctx.base.config.numLayers;
  const H = ctx.base.config.hiddenSize;
  const N = merge.gatedExperts.length;
  const mode = GATE_MODES[ctx.gateMode];
  if (mode.random) {
    // Drawn from the seed where the seed is known (assemble-experts), so a new seed leaves this stage cached.
    const info: GatesInfo = { layers: L, experts: N, hidden: H, gateMode: ctx.gateMode, conditionNumbers: [], warnings: [], deferred: true };
    await mkdir(outDir, { recursive: true });
    await writeStageFile(join(outDir, 'gates.json'), JSON.stringify({ version: GATES_VERSION, ...info }, null, 2) + '\n');
    return { gates: null, info };
  }
  // One builder per kind of prompt state: a new kind fails the type-check here until it has one.
  let g: GateTensor;
  switch (mode.states) {
    case 'hidden':
      g = await hiddenGates(merge, statesDir, mode.reduction);
      break;
    case 'router_input':
      g = await fittedGates(merge, statesDir);
      break;
    case 'cheap_embed':
      g = await cheapEmbedGates(merge, statesDir);
      break;
  }
  checkGatesFinite(merge, g);
  const { conditionNumbers, warning } = degenerateLayers(g);
  const info: GatesInfo = { layers: L, experts: N, hidden: H, gateMode: ctx.gateMode, conditionNumbers, warnings: warning ? [warning] : [] };
  await mkdir(outDir, { recursive: true });
  await writeGates(join(outDir, 'gates.safetensors'), g);
  await writeStageFile(join(outDir, 'gates.json'), JSON.stringify({ version: GATES_VERSION, ...info }, (_, v) => (v === Infinity ? 'Infinity' : v), 2) + '\n');
  return { gates: g, info };
}

const GATES_VERSION = 1;

/** gates.safetensors, checked as a stage file: one F32 tensor `gates` of rank 3, of the expected size when given. */
export async function readGates(dir: string, expect?: { layers: number; experts: number; hidden: number }): Promise<GateTensor> {
  const file = join(dir, 'gates.safetensors');
  if (!existsSync(file)) throw missingStageFile(file, 'build-gates');
  let w: SafetensorsWeights;
  try {
    w = await SafetensorsWeights.openFiles(dir, [file]);
  } catch (e) {
    throw refuseStageFile(file, (e as Error).message.replace(`${file}: `, ''));
  }
  if (!w.has('gates')) throw refuseStageFile(file, 'it holds no tensor "gates"');
  const loc = w.get('gates');
  const want = expect ? [expect.layers, expect.experts, expect.hidden] : null;
  if (loc.dtype !== 'F32' || loc.shape.length !== 3 || (want && loc.shape.join() !== want.join())) {
    throw refuseStageFile(file, `gates is ${loc.dtype} [${loc.shape.join(', ')}], expected F32 [${want ? want.join(', ') : 'layers, experts, hidden'}]`, { tensor: 'gates' });
  }
  const [layers, experts, hidden] = loc.shape as [number, number, number];
  return { layers, experts, hidden, data: decodeFloats(await readTensorBytes(loc), 'F32') };
}

async function cheapEmbedGates(merge: MergeContext, statesDir: string): Promise<GateTensor> {
  const L = merge.ctx.base.config.numLayers;
  const H = merge.ctx.base.config.hiddenSize;
  const N = merge.gatedExperts.length;
  const states = await readPromptStates(statesDir, expectedPromptStates(merge));
  const byText = new Map(states.index.prompts.map((p, i) => [p.text, i]));
  const sumOf = async (prompts: string[]) => {
    const acc = new Float64Array(H);
    for (const p of prompts) {
      const v = await states.tensor(`p${byText.get(p)}.sum`);
      checkStatesFinite(merge, [v], p, 'token embeddings');
      for (let k = 0; k < H; k++) acc[k] += v[k]!;
    }
    return acc;
  };
  const g = newGates(L, N, H);
  for (let e = 0; e < N; e++) {
    const spec = merge.gatedExperts[e]!.spec;
    // normalize(normalize(Σpos) − normalize(Σneg)), the same row for every layer.
    let v = normalize(await sumOf(spec.positive_prompts ?? []));
    const neg = spec.negative_prompts ?? [];
    if (neg.length > 0) {
      const n = normalize(await sumOf(neg));
      for (let k = 0; k < H; k++) v[k] -= n[k]!;
      v = normalize(v);
    }
    for (let l = 0; l < L; l++) g.data.set(v, (l * N + e) * H);
  }
  return g;
}

/** hidden / hidden_last: mean of last-token states; hidden_avg: mean of the reference's padded means. */
async function hiddenGates(merge: MergeContext, statesDir: string, reduction: HiddenReduction): Promise<GateTensor> {
  const L = merge.ctx.base.config.numLayers;
  const H = merge.ctx.base.config.hiddenSize;
  const N = merge.gatedExperts.length;
  const states = await readPromptStates(statesDir, expectedPromptStates(merge));
  const byText = new Map<string, PromptStates>();
  // Only the states the reduction takes are read and checked (the last token's, or the sums): half the file, whose
  // fresh memory and JIT-cold checks were most of a one-prompt edit's gates; rows the process wrote itself are not read.
  for (const [i, p] of states.index.prompts.entries()) {
    const rows = await states.rows(reduction === 'last' ? `p${i}.last` : `p${i}.sum`);
    checkStatesFinite(merge, rows, p.text, 'hidden states');
    byText.set(p.text, reduction === 'last' ? { last: rows, sum: [], count: p.count } : { last: [], sum: rows, count: p.count });
  }
  const pad = reduction === 'avg' ? await states.rows('pad') : null;
  if (pad) checkStatesFinite(merge, pad, '(pad token)', 'hidden states');
  const g = newGates(L, N, H);
  for (let e = 0; e < N; e++) {
    const spec = merge.gatedExperts[e]!.spec;
    const pos = (spec.positive_prompts ?? []).map((t) => byText.get(t)!);
    const neg = (spec.negative_prompts ?? []).map((t) => byText.get(t)!);
    hiddenRows(pos, neg, pad, reduction, H, L, g.data, e * H, N * H);
  }
  return g;
}

/** fit: every layer's router fitted to the prompts' tokens (libs/gates/fit.ts), on their router inputs. */
async function fittedGates(merge: MergeContext, statesDir: string): Promise<GateTensor> {
  const L = merge.ctx.base.config.numLayers;
  const states = await readPromptStates(statesDir, expectedPromptStates(merge));
  const H = states.index.hidden;
  const prompts = states.index.prompts;
  const { gates } = await fitGates(merge, prompts, async (u) => {
    const i = u.prompt;
    const x = await states.tokens(unitTensor(u), prompts[i]!.count);
    const per = prompts[i]!.count * H;
    const rows = Array.from({ length: L }, (_, l) => x.subarray(l * per, (l + 1) * per));
    checkStatesFinite(merge, rows, prompts[i]!.text, 'router inputs');
    return rows;
  });
  return gates;
}

/** The gate tensor for assembly: drawn from the seed in random modes, else the build-gates output. */
export async function gatesForAssembly(merge: MergeContext, buildGatesDir: string): Promise<{ gates: GateTensor; warnings: string[] }> {
  const { ctx } = merge;
  const draw = GATE_MODES[ctx.gateMode].random;
  if (draw) {
    const gates = drawnGates(draw, ctx.base.config.numLayers, merge.gatedExperts.length, ctx.base.config.hiddenSize, ctx.seed, ctx.rng ?? 'stream');
    const { warning } = degenerateLayers(gates);
    return { gates, warnings: warning ? [warning] : [] };
  }
  const file = join(buildGatesDir, 'gates.json');
  const info = await readStageJson<GatesInfo>(file, GATES_INFO_SCHEMA, GATES_VERSION, 'build-gates');
  const want = { layers: ctx.base.config.numLayers, experts: merge.gatedExperts.length, hidden: ctx.base.config.hiddenSize };
  if (info.gateMode !== ctx.gateMode || info.layers !== want.layers || info.experts !== want.experts || info.hidden !== want.hidden) {
    throw refuseStageFile(file, `it describes ${info.gateMode} gates of ${info.layers} layers x ${info.experts} experts x ${info.hidden}, but the recipe needs ${ctx.gateMode} gates of ${want.layers} x ${want.experts} x ${want.hidden}`);
  }
  return { gates: await readGates(buildGatesDir, want), warnings: info.warnings };
}

export async function writeGates(file: string, g: GateTensor): Promise<void> {
  const header = encodeHeader([{ name: 'gates', dtype: 'F32', shape: [g.layers, g.experts, g.hidden] }]);
  await writeFile(file, Buffer.concat([header, Buffer.from(g.data.buffer, g.data.byteOffset, g.data.byteLength)]));
}

/**
 * NaN or Inf in a prompt's states comes from the base's weights (a NaN would otherwise reach the routers and
 * be blamed on prompts that are too similar): name the model and the first layer where it appears.
 */
function checkStatesFinite(merge: MergeContext, rows: Float32Array[], prompt: string, what: string): void {
  const layer = rows.findIndex((r) => firstNonFinite(r) >= 0);
  if (layer < 0) return;
  const base = merge.ctx.base;
  const where = what === 'token embeddings' ? 'the token embeddings (model.embed_tokens.weight)' : what === 'router inputs' ? `the router input of layer ${layer}` : layer === 0 ? 'the input of layer 0 (the token embeddings)' : `the output of layer ${layer - 1} (input of layer ${layer})`;
  throw new ModelError('non_finite', `${what} of base model ${base.ref} for prompt ${JSON.stringify(prompt)} hold NaN or Inf at ${where}: its weights are not finite`, { file: base.dir });
}

/** Index of the first NaN or infinity in `v`, or -1 (checked on its bits). */
const firstNonFinite = (v: Float32Array) => firstNonFiniteBits(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), 'F32');

function checkGatesFinite(merge: MergeContext, g: GateTensor): void {
  const at = firstNonFinite(g.data);
  if (at < 0) return;
  const layer = Math.floor(at / (g.experts * g.hidden));
  const e = Math.floor((at % (g.experts * g.hidden)) / g.hidden);
  const ex = merge.gatedExperts[e]!;
  throw new ModelError('non_finite', `router of layer ${layer} for ${ex.shared ? 'shared_experts' : 'experts'}[${ex.index}] (${ex.model.ref}) holds NaN or Inf, computed from base model ${merge.ctx.base.ref}`, { file: merge.parsed.file });
}
