/**
 * The merged model the report runs holds, for every tensor, exactly the writer's bytes widened to float32: parts
 * copied unchanged are read straight from the source files (libs/stages/merged-model.ts), the rest (noise,
 * residual_scale, casts, gate rows) come through the writer's producer. Two layers' weights stay valid side by
 * side, since the forward pass reads the next layer while one runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildCase, type RouterCase } from '../helpers/router-cases';
import { recipeYaml, tinyFamilyModel } from '../helpers/arch-models';
import { mergedModel } from '../../libs/stages/merged-model';
import { tensorProducer } from '../../libs/stages/write';
import { ChunkPool } from '../../libs/safetensors/chunk-pool';
import { decodeFloats } from '../../libs/safetensors/dtype';
import type { MoeLayerWeights, Weight } from '../../libs/forward';
import type { PlanTensor } from '../../libs/plan/types';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-merged-weights-');

const CASES: (RouterCase & { dtype?: string })[] = [
  {
    // bfloat16 sources kept as they are: plain parts read directly; noised and scaled experts and gates produced.
    name: 'weights-qwen2-bf16',
    async recipe(d) {
      const over = { layers: 3, dtype: 'BF16' as const };
      const base = await tinyFamilyModel(join(d, 'wq-base'), 'qwen2', 41, over);
      const a = await tinyFamilyModel(join(d, 'wq-a'), 'qwen2', 42, over);
      const file = join(d, 'weights-qwen2-bf16.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden', topK: 2, experts: [{ model: a, prompts: ['sums of numbers'], noise: 0.01 }, { model: base, prompts: ['poems about the sea'], residual: 0.5 }, { model: a, prompts: ['castles'] }], shared: [{ model: base, prompts: ['anything at all'] }] }));
      return file;
    },
    texts: [],
  },
  {
    // Fused Mixtral stacks from float32 sources: each stack mixes parts read directly with a noised expert's.
    name: 'weights-mixtral-fused',
    layout: 'fused',
    async recipe(d) {
      const over = { layers: 3 };
      const base = await tinyFamilyModel(join(d, 'wm-base'), 'mistral', 51, over);
      const a = await tinyFamilyModel(join(d, 'wm-a'), 'mistral', 52, over);
      const file = join(d, 'weights-mixtral-fused.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden', topK: 2, architecture: 'mixtral', experts: [{ model: a, prompts: ['sums of numbers'] }, { model: base, prompts: ['poems about the sea'], noise: 0.02 }] }));
      return file;
    },
    texts: [],
  },
];

/** Every float32 array of one layer's weights, by a label. */
function arrays(w: MoeLayerWeights): Map<string, Weight> {
  const out = new Map<string, Weight>([...w.attention].map(([k, v]) => [`attention.${k}`, v]));
  out.set('router', w.router);
  w.experts.forEach((m, e) => (['gate', 'up', 'down'] as const).forEach((k) => out.set(`expert${e}.${k}`, m[k])));
  if (w.shared) (['gate', 'up', 'down'] as const).forEach((k) => out.set(`shared.${k}`, w.shared![k]));
  if (w.sharedGate) out.set('sharedGate', w.sharedGate);
  return out;
}

for (const c of CASES) {
  test(`${c.name}: every layer's weights are the writer's bytes widened, and two layers stay valid together`, async () => {
    const built = await buildCase(c, dir, join(dir, 'cache'));
    const plan = built.plan;
    const direct = (t: PlanTensor) => t.parts.filter((p) => p.kind === 'source' && !p.noise && p.scale === undefined && p.dtype === t.dtype).length;
    const produced = (t: PlanTensor) => t.parts.length - direct(t);
    // Both paths are taken (else this test checks only one of them).
    assert.ok(plan.tensors.some((t) => direct(t) > 0) && plan.tensors.some((t) => produced(t) > 0 && t.parts.some((p) => p.kind === 'source' && p.noise)), 'the plan has direct and noised parts');
    // The writer's bytes for each tensor, widened (the reference for every value).
    const pool = new ChunkPool(1 << 20);
    const produce = tensorProducer(built.gates, pool);
    const written = async (t: PlanTensor): Promise<Float32Array> => {
      const chunks: Buffer[] = [];
      for await (const ch of produce(t)) chunks.push(Buffer.from(ch));
      return decodeFloats(Buffer.concat(chunks), t.dtype);
    };
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    const model = mergedModel(plan, built.gates);
    const L = plan.config.num_hidden_layers as number;
    // Layers l and l + 1 asked for before l is checked, as the forward pass asks for them.
    let cur = await model.layer(0);
    let checked = 0;
    for (let l = 0; l < L; l++) {
      const next = l + 1 < L ? await model.layer(l + 1) : null;
      const want = new Map<string, Float32Array>();
      for (const t of plan.tensors) if (t.name.startsWith(`model.layers.${l}.`)) want.set(t.name, await written(t));
      // Every array of layer l lies somewhere in one of its tensors' written values, in full.
      const flat = [...want.values()];
      for (const [label, w] of arrays(cur)) {
        const n = w.shape.reduce((a, b) => a * b, 1);
        assert.equal(w.data.length, n, `layer ${l} ${label}: length`);
        const hit = flat.some((v) => {
          for (let at = 0; at + n <= v.length; at += n) {
            let same = true;
            for (let k = 0; k < n && same; k++) same = Object.is(v[at + k], w.data[k]);
            if (same) return true;
          }
          return false;
        });
        assert.ok(hit, `layer ${l} ${label}: not the written values`);
        checked++;
      }
      assert.ok(byName.size > 0);
      if (next) cur = next;
    }
    assert.ok(checked > 0);
  });
}
