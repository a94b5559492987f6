import { formatFiles, type Tree } from '@nx/devkit';
import { parseRecipeText } from '../../../libs/recipe';
import { checkRecipe } from '../../../libs/recipe';
import { PLACEHOLDER_PROMPT } from '../../../libs/recipe';
import { DEFAULT_GATE_MODE, GATE_MODES, gateModesHelp, type GateMode } from '../../../libs/gates';
import { looksLikeRepoId } from '../../../libs/resolve';
import { OUTPUT_DTYPE_NAMES } from '../../../libs/safetensors';
import { orList } from '../../../libs/util';
import { existsSync, statSync } from 'node:fs';
import { posix } from 'node:path';

export interface RecipeGeneratorOptions {
  name: string;
  base: string;
  experts: string;
  gateMode?: GateMode;
  dtype?: string;
  expertsPerToken?: number;
  /** Per expert, `;`-separated groups of `|`-separated positive prompts. */
  prompts?: string;
}

const q = (s: string) => JSON.stringify(s);

/** `# ` comment lines of at most 90 columns. */
function comment(text: string): string[] {
  const lines: string[] = [];
  for (const word of text.split(' ')) {
    const last = lines.length - 1;
    if (last >= 0 && lines[last]!.length + 1 + word.length <= 90) lines[last] += ` ${word}`;
    else lines.push(`# ${word}`);
  }
  return lines;
}

/** Writes workspace-models/<name>/moe.yml: a valid mergekit-moe recipe with each field explained. */
export function recipeText(o: RecipeGeneratorOptions): string {
  const experts = o.experts.split(',').map((e) => e.trim()).filter(Boolean);
  const mode = o.gateMode ?? DEFAULT_GATE_MODE;
  // Prompts are left out only where the mode needs none (random); uniform_random's are checked as the reference does.
  const random = !GATE_MODES[mode].needsPrompts;
  const given = (o.prompts ?? '').split(';').map((g) => g.split('|').map((p) => p.trim()).filter(Boolean));
  // Placeholders make the build fail (fetch refuses them) until real prompts replace them.
  const promptsOf = (i: number, e: string) => (given[i]?.length ? given[i]! : [`${PLACEHOLDER_PROMPT} a prompt typical of expert ${i} (${e})`]);
  const lines = [
    '# Model paths are relative to this folder, or Hugging Face ids (org/name, org/name@revision).',
    '# Base model: embeddings, attention, norms, lm_head and the tokenizer come from it.',
    `base_model: ${q(o.base)}`,
    ...comment(`Routers: ${gateModesHelp()}.`),
    `gate_mode: ${mode}`,
    `# Output dtype: ${orList(OUTPUT_DTYPE_NAMES)} (default: the base model's).`,
    `dtype: ${o.dtype ?? 'bfloat16'}`,
    '# Experts active per token (top-k).',
    `experts_per_token: ${o.expertsPerToken ?? 2}`,
    '# Routed experts, in order; each contributes its MLP weights.',
    'experts:',
    ...experts.flatMap((e, i) => [
      `  - source_model: ${q(e)}`,
      ...(random
        ? ['    # Routers are random in this gate mode: prompts are not needed.']
        : [
            '    # Prompts that should route to this expert (write a few that are typical of it).',
            '    positive_prompts:',
            ...promptsOf(i, e).map((p) => `      - ${q(p)}`),
            '    # Optional: prompts that should not route here.',
            '    # negative_prompts: []',
          ]),
      '    # Optional: Gaussian noise on this expert\'s MLP weights, and a scale on its output (down_proj).',
      '    # noise_scale: 0.01',
      '    # residual_scale: 1.0',
    ]),
    '# Optional: always-active experts (DeepSeek: one, ungated; Qwen MoE: exactly one, with prompts).',
    '# shared_experts: []',
    '# Optional: output architecture by name prefix (mixtral, deepseek, qwen, qwen3).',
    '# architecture: mixtral',
    '',
  ];
  return lines.join('\n');
}

/**
 * A model the recipe names is a folder relative to the recipe's folder (it must exist now: a typo would only fail
 * the build later) or a Hugging Face id. Paths are looked up in Nx's tree, which sees the workspace's files.
 */
function checkModel(tree: Tree, recipeDir: string, option: string, ref: string): void {
  const at = ref.lastIndexOf('@');
  const path = at > 0 ? ref.slice(0, at) : ref;
  const local = posix.normalize(posix.join(recipeDir, path));
  if (!posix.isAbsolute(path) && !local.startsWith('..') && tree.exists(local) && !tree.isFile(local)) return;
  if (posix.isAbsolute(path) && existsSync(path) && statSync(path).isDirectory()) return;
  if (looksLikeRepoId(path) && !path.startsWith('.')) return;
  throw new Error(`--${option}: "${ref}" is neither a folder (relative to ${recipeDir}/, the recipe's folder) nor a Hugging Face id org/name[@revision]`);
}

export default async function recipeGenerator(tree: Tree, options: RecipeGeneratorOptions): Promise<void> {
  const file = `workspace-models/${options.name}/moe.yml`;
  if (tree.exists(file)) throw new Error(`${file} already exists`);
  const dir = posix.dirname(file);
  checkModel(tree, dir, 'base', options.base);
  for (const e of options.experts.split(',').map((x) => x.trim()).filter(Boolean)) checkModel(tree, dir, 'experts', e);
  const groups = options.prompts ? options.prompts.split(';').length : 0;
  const experts = options.experts.split(',').map((e) => e.trim()).filter(Boolean).length;
  if (options.prompts && groups !== experts) throw new Error(`--prompts has ${groups} group(s) (separated by ';') for ${experts} expert(s)`);
  const text = recipeText(options);
  // The generated recipe must pass our own checks (each expert gets distinct placeholder prompts).
  checkRecipe(parseRecipeText(text, file), { allowIdenticalModels: true });
  tree.write(file, text);
  await formatFiles(tree);
}
