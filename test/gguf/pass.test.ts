/**
 * The GGUF written in the same pass as the shards (GgufPass): tensors fed in shard order, encoded at their places,
 * the tensors of a shard not produced in this run read back from it, give the same bytes as the one-pass writer in
 * GGUF order (which the converter fixtures check), for every type: q/k rows permuted, expert stacks, q8_0 blocks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkPool, SafetensorsWeights, writeShard } from '../../libs/safetensors';
import { GGUF_TYPES, GgufPass, producerSource, reflinkAsCopy, shardSource, writeModelGguf } from '../../libs/gguf';
import { ggufPlan, shardsOf } from '../../libs/stages/write-manifest';
import { tensorProducer } from '../../libs/stages/write';
import { gatesOf, mixtralPlan } from '../helpers/mixtral-plan';
import { tempDir } from '../helpers/tmp';
import { directIn } from '../helpers/direct-io';

const d = tempDir();
const dirOf = d;
const plan = mixtralPlan(d);
const vocab = [{ key: 'tokenizer.ggml.model', value: { type: 'string' as const, value: 'gpt2' } }];

const directHere = () => directIn(d);

// These files are far under the size written direct by default: direct here is asked for (directMinBytes 0).
const MODES = [{ name: 'buffered', opts: { direct: false } }, { name: 'direct', opts: { direct: true, directMinBytes: 0 } }];

for (const type of GGUF_TYPES) for (const mode of MODES) {
  test(`${type}, ${mode.name}: shards in their order, one kept, give the one-pass writer's file`, async () => {
    const pool = new ChunkPool(1 << 20);
    const shards = shardsOf(plan);
    assert.ok(shards.length > 10, 'a shard per tensor');
    const layout = ggufPlan(plan, shards, type);
    const want = join(d, `want-${type}-${mode.name}.gguf`);
    await writeModelGguf(want, layout, vocab, producerSource(tensorProducer(gatesOf(3), pool)), { pool, ...mode.opts });

    const out = join(d, `${type}-${mode.name}`);
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out);
    const pass = await GgufPass.open(join(out, 'model.gguf'), layout, vocab, pool, mode.opts);
    assert.equal(pass.direct, mode.opts.direct && directHere(), 'direct only where asked and possible');
    const produce = tensorProducer(gatesOf(3), pool);
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    // Shard 3 (an expert's tensor) is "kept": written without the pass, its tensors read back afterwards. The
    // router's shard is produced twice (a rewrite): its places are written again.
    const kept = shards[3]!;
    for (const s of [...shards, shards[0]!]) {
      const teed = s !== kept;
      await writeShard(join(out, s.file), s.tensors, (t) => (teed ? pass.tee(byName.get(t.name)!, produce(byName.get(t.name)!)) : produce(byName.get(t.name)!)), { pool });
    }
    assert.deepEqual(pass.missing(), kept.tensors.map((t) => t.name));
    await pass.fill(shardSource(await SafetensorsWeights.openFiles(out, shards.map((s) => join(out, s.file))), pool));
    assert.deepEqual(pass.missing(), []);
    await pass.finish();
    assert.ok(readFileSync(join(out, 'model.gguf')).equals(readFileSync(want)), `${type}: same bytes`);
    if (mode.opts.direct) assert.ok(readFileSync(want).equals(readFileSync(join(d, `want-${type}-buffered.gguf`))), 'the one-pass writer: direct = buffered');
    // The shards the pass saw are as the producer makes them (the pass does not touch the chunks it is lent).
    const direct = join(d, `direct-${type}.safetensors`);
    await writeShard(direct, shards[2]!.tensors, (t) => produce(byName.get(t.name)!), { pool });
    assert.ok(readFileSync(direct).equals(readFileSync(join(out, shards[2]!.file))));
  });
}

test('a tensor producing more than its elements stops the pass', async () => {
  const pool = new ChunkPool(1 << 20);
  const shards = shardsOf(plan);
  const pass = await GgufPass.open(join(d, 'over.gguf'), ggufPlan(plan, shards, 'bf16'), vocab, pool);
  const norm = plan.tensors.find((t) => t.name === 'model.norm.weight')!;
  async function* twice() {
    yield Buffer.alloc(64);
    yield Buffer.alloc(64);
  }
  await assert.rejects(async () => {
    for await (const _ of pass.tee(norm, twice()));
  }, /model\.norm\.weight produced more than its 32 elements/);
  await pass.abort();
});

// The previous file's bytes copied (direct or not), or the whole file taken as a reflink would give it.
for (const mode of [...MODES.map((m) => ({ ...m, reflink: false })), { ...MODES[1]!, name: 'reflink', reflink: true }]) test(`${mode.name}: the previous GGUF with only the changed tensors written gives the new file; another header is refused`, async () => {
  const pool = new ChunkPool(1 << 20);
  const d = join(dirOf, mode.name);
  mkdirSync(d);
  const shards = shardsOf(plan);
  const layout = ggufPlan(plan, shards, 'q8_0');
  const before = join(d, 'before.gguf');
  const after = join(d, 'after.gguf');
  await writeModelGguf(before, layout, vocab, producerSource(tensorProducer(gatesOf(5), pool)), { pool });
  await writeModelGguf(after, layout, vocab, producerSource(tensorProducer(gatesOf(6), pool)), { pool });
  const router = plan.tensors.find((t) => t.group === 'router')!;
  reflinkAsCopy.on = mode.reflink;
  let pass: GgufPass;
  try {
    pass = (await GgufPass.fromPrevious(join(d, 'patched.gguf'), before, layout, vocab, plan.tensors.filter((t) => t !== router).map((t) => t.name), pool, mode.opts))!;
  } finally {
    reflinkAsCopy.on = false;
  }
  assert.equal(pass.direct, mode.opts.direct && directHere());
  assert.deepEqual(pass.missing(), [router.name]);
  for await (const _ of pass.tee(router, tensorProducer(gatesOf(6), pool)(router)));
  await pass.finish();
  assert.ok(readFileSync(join(d, 'patched.gguf')).equals(readFileSync(after)));
  const other = [{ key: 'tokenizer.ggml.model', value: { type: 'string' as const, value: 'llama' } }];
  assert.equal(await GgufPass.fromPrevious(join(d, 'refused.gguf'), before, layout, other, [], pool), null);
  assert.ok(!existsSync(join(d, 'refused.gguf')));
});

test('shards written at once, each teeing into the pass, give the one-pass writer\'s file (the pass puts one write at a time)', async () => {
  const pool = new ChunkPool(1 << 20);
  const shards = shardsOf(plan);
  const layout = ggufPlan(plan, shards, 'bf16');
  const want = join(d, 'concurrent-want.gguf');
  await writeModelGguf(want, layout, vocab, producerSource(tensorProducer(gatesOf(4), pool)), { pool, direct: false });
  const out = join(d, 'concurrent');
  mkdirSync(out);
  const pass = await GgufPass.open(join(out, 'model.gguf'), layout, vocab, pool, { direct: true, directMinBytes: 0 });
  const produce = tensorProducer(gatesOf(4), pool);
  const byName = new Map(plan.tensors.map((t) => [t.name, t]));
  await Promise.all(shards.map((s) => writeShard(join(out, s.file), s.tensors, (t) => pass.tee(byName.get(t.name)!, produce(byName.get(t.name)!)), { pool })));
  await pass.finish();
  assert.ok(readFileSync(join(out, 'model.gguf')).equals(readFileSync(want)));
});
