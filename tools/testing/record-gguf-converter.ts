/**
 * Records test/fixtures/gguf/converter/CASE-TYPE.json: what llama.cpp's convert_hf_to_gguf.py writes from each
 * GGUF_CASES merge (keys and per-tensor hashes; the files themselves stay out of the repository).
 *
 *   GGUF_CONVERTER=/path/to/convert_hf_to_gguf.py PYTHON=/path/to/python PYTHONPATH=/path/to/gguf-py \
 *     node --import tsx tools/testing/record-gguf-converter.ts
 *
 * The tiny fixture tokenizer is unknown to the converter, which then stops; run a copy of it patched to take
 * the "default" pre-tokenizer (the tokenizer keys are not part of these records).
 */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { GGUF_TYPES } from '../../libs/gguf';
import { GGUF_CASES, ggufSummary } from './gguf-cases';

async function main() {
  const root = resolve(__dirname, '..', '..');
  const converter = process.env.GGUF_CONVERTER;
  if (!converter) throw new Error('set GGUF_CONVERTER to convert_hf_to_gguf.py');
  const out = join(root, 'test', 'fixtures', 'gguf', 'converter');
  mkdirSync(out, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'moe-forge-gguf-record-'));
  try {
    for (const c of GGUF_CASES) {
      const recipe = join(work, `${c.name}.yml`);
      writeFileSync(recipe, c.recipe(join(root, 'test', 'fixtures', 'families')));
      const dir = join(work, c.name);
      await mergeRecipe({ recipeFile: recipe, outPath: dir, modelBaseDir: work, layout: c.layout, cacheDir: join(work, 'cache') });
      for (const t of GGUF_TYPES) {
        const file = join(work, `${c.name}-${t}.gguf`);
        execFileSync(process.env.PYTHON ?? 'python3', [converter, dir, '--outtype', t, '--outfile', file], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
        writeFileSync(join(out, `${c.name}-${t}.json`), JSON.stringify(await ggufSummary(file), null, 1) + '\n');
        console.log(`${c.name} ${t}`);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
