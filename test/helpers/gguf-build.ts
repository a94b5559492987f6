/** Builds a recorded GGUF fixture's recipe with our command, `--gguf TYPE` (test/fixtures/gguf/index.json). */
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { mergekitMoe } from './cli';
import { readIndex } from './gguf-manifest';
import { ROOT } from './tmp';

/** The recipe of a recorded output with its model paths made absolute, written into `dir`. */
export function writeRecipe(arch: string, dir: string): string {
  const recipe = structuredClone(readIndex().outputs[arch]!.recipe) as { base_model: string; experts: { source_model: string }[]; shared_experts?: { source_model: string }[] };
  recipe.base_model = resolve(ROOT, recipe.base_model);
  for (const e of [...recipe.experts, ...(recipe.shared_experts ?? [])]) e.source_model = resolve(ROOT, e.source_model);
  const yml = join(dir, `${arch}.yml`);
  writeFileSync(yml, JSON.stringify(recipe));
  return yml;
}

/** Runs mergekit-moe on the recorded recipe into `out`, with extra arguments; fails with its output. */
export async function buildRecorded(arch: string, dir: string, out: string, extra: string[] = []): Promise<void> {
  const r = await mergekitMoe([writeRecipe(arch, dir), out, ...readIndex().outputs[arch]!.args, ...extra], dir, { ORT_DISABLE_TELEMETRY: '1' });
  if (r.exitCode !== 0) throw new Error(`mergekit-moe ${arch} ${extra.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
}
