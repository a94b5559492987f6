import assert from 'node:assert/strict';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';

let n = 0;

/** Writes `text` as a recipe in `dir` and checks the merge fails with `re`, leaving no output or temporary folder. */
export async function mergeRefused(dir: string, text: string, re: RegExp): Promise<void> {
  const f = join(dir, `r${n++}.yml`);
  writeFileSync(f, text);
  const out = join(dir, `out${n}`);
  await assert.rejects(mergeRecipe({ recipeFile: f, outPath: out, modelBaseDir: dir, cacheDir: join(dir, 'cache') }), (e: Error) => {
    assert.match(e.message, re);
    return true;
  });
  assert.ok(!existsSync(out), 'no output folder appears');
  assert.deepEqual(readdirSync(dir).filter((x) => x.includes('.tmp-')), [], 'no temporary folder is left');
}
