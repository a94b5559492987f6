/**
 * `--gguf TYPE` for every output architecture and type against llama.cpp's convert_hf_to_gguf.py run on the
 * same merged folder (recorded in test/fixtures/gguf/converter by tools/testing/record-gguf-converter.ts):
 * the same keys and values (tokenizer and authorship keys aside), the same tensors in the same order, with
 * the same shapes, types and bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { GGUF_TYPES } from '../../libs/gguf';
import { GGUF_CASES, ggufSummary, type GgufSummary } from '../../tools/testing/gguf-cases';
import { FIXTURES, tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-gguf-conv-');

for (const c of GGUF_CASES) {
  test(`${c.name}: every GGUF type is what the converter writes`, async () => {
    const recipe = join(dir, `${c.name}.yml`);
    writeFileSync(recipe, c.recipe(join(FIXTURES, 'families')));
    const out = join(dir, c.name);
    for (const type of GGUF_TYPES) {
      const lines: string[] = [];
      await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: dir, layout: c.layout, cacheDir: join(dir, 'cache'), gguf: type, warn: (l) => lines.push(l) });
      const file = join(out, `model-${type}.gguf`);
      assert.ok(existsSync(file), `${file} written`);
      const want = JSON.parse(readFileSync(join(FIXTURES, 'gguf', 'converter', `${c.name}-${type}.json`), 'utf8')) as GgufSummary;
      const got = await ggufSummary(file);
      assert.deepEqual(got.metadata, want.metadata, `${c.name} ${type}: keys`);
      assert.deepEqual(got.tensors.map((t) => [t.name, t.type, t.shape.join('x')]), want.tensors.map((t) => [t.name, t.type, t.shape.join('x')]), `${c.name} ${type}: tensors`);
      for (const [i, t] of got.tensors.entries()) assert.equal(t.sha256, want.tensors[i]!.sha256, `${c.name} ${type}: bytes of ${t.name}`);
      // One GGUF at a time: the previous type's file is not carried over.
      for (const other of GGUF_TYPES) if (other !== type) assert.ok(!existsSync(join(out, `model-${other}.gguf`)));
      // llama.cpp ignores norm_topk_prob in these graphs: said once, only where it changes something.
      const warned = lines.filter((l) => l.includes('norm_topk_prob'));
      assert.equal(warned.length, c.name === 'qwen2-moe' || c.name === 'deepseek' ? 1 : 0, lines.join('\n'));
    }
  });
}
