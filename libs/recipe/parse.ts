import { isMap, isSeq, type Document, type LineCounter } from 'yaml';
import type { z } from 'zod';
import { RecipeError } from '../errors';
import { parseYamlInput, readInputText, RECIPE } from '../input';
import { GATE_MODE_NAMES } from '../gates';
import { EXPERT_KEYS, RecipeSchema, TOP_LEVEL_KEYS, type Recipe } from './schema';
import { suggest } from './suggest';

export interface ParsedRecipe {
  recipe: Recipe;
  /** The YAML text exactly as read (copied to the output as mergekit_moe_config.yml). */
  text: string;
  file: string;
  /** Line and column (1-based) of the node at a field path, for later errors that concern a field. */
  position(path: readonly (string | number)[]): { line?: number; column?: number };
}

type Path = readonly PropertyKey[];

function pathString(path: Path): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s || '(top level)';
}

function locator(doc: Document, lc: LineCounter) {
  return (path: Path, key?: string): { line?: number; column?: number } => {
    let node: unknown = doc.getIn(path as (string | number)[], true);
    if (key !== undefined && isMap(node)) {
      const pair = node.items.find((it) => (it.key as { value?: unknown })?.value === key);
      if (pair) node = pair.key;
    }
    // Fall back to the nearest parent that exists (a missing required field points at its parent).
    for (let cut = path.length; !node && cut > 0; cut--) node = doc.getIn(path.slice(0, cut - 1) as (string | number)[], true);
    const range = (node as { range?: [number, number, number] } | undefined)?.range;
    if (!range) return {};
    const { line, col } = lc.linePos(range[0]);
    return { line, column: col };
  };
}

function describeIssue(issue: z.core.$ZodIssue): { message: string; key?: string } {
  const path = issue.path;
  if (issue.code === 'unrecognized_keys') {
    const parent = path.length === 0 ? TOP_LEVEL_KEYS : path.includes('experts') || path.includes('shared_experts') ? EXPERT_KEYS : [];
    const key = issue.keys[0]!;
    const parts = issue.keys.map((k) => {
      const s = suggest(k, parent);
      return `unknown key "${k}"${s ? ` (did you mean "${s}"?)` : ''}`;
    });
    return { message: `${parts.join('; ')}; valid keys here: ${parent.join(', ')}`, key };
  }
  if (issue.code === 'invalid_value' && path[path.length - 1] === 'gate_mode') {
    const got = (issue as { input?: unknown }).input;
    const s = typeof got === 'string' ? suggest(got, GATE_MODE_NAMES) : null;
    return { message: `unknown gate_mode ${JSON.stringify(got)}${s ? ` (did you mean "${s}"?)` : ''}; expected one of ${GATE_MODE_NAMES.join(', ')}` };
  }
  if ((issue as { input?: unknown }).input === undefined) {
    return { message: `is required${issue.code === 'invalid_type' ? ` (${issue.expected})` : ''}` };
  }
  if (issue.code === 'invalid_union' && (path[path.length - 1] === 'source_model' || path[path.length - 1] === 'base_model')) {
    return { message: 'must be a model path or Hub id (string), or a mapping {model: {path, revision}}' };
  }
  return { message: issue.message.replace(/^Invalid input: /, '') };
}

/** Parses and validates recipe text; every error names the file, line, column and field path. */
export function parseRecipeText(text: string, file: string): ParsedRecipe {
  const { doc, lc, data } = parseYamlInput(text, file, RECIPE);
  const at = locator(doc, lc);
  if (data === null || typeof data !== 'object' || Array.isArray(data) || !isMap(doc.contents)) {
    throw new RecipeError('recipe_shape', 'a recipe must be a YAML mapping with at least base_model and experts', { file, line: 1 });
  }
  const result = RecipeSchema.safeParse(data, { reportInput: true });
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const { message, key } = describeIssue(issue);
      const fieldPath = key !== undefined ? [...issue.path, key] : issue.path;
      const pos = at(issue.path, key);
      return { message, field: pathString(fieldPath), ...pos };
    });
    const first = problems[0]!;
    const rest = problems.slice(1).map((p) => `\n  ${file}:${p.line ?? '?'}:${p.column ?? '?'}, field ${p.field}: ${p.message}`).join('');
    throw new RecipeError('recipe_schema', first.message + rest, { file, line: first.line, column: first.column, field: first.field });
  }
  for (const key of ['experts', 'shared_experts'] as const) {
    const node = doc.get(key, true);
    if (node !== undefined && node !== null && !isSeq(node) && (data as Record<string, unknown>)[key] !== null) {
      throw new RecipeError('recipe_schema', 'must be a list', { file, field: key, ...at([key]) });
    }
  }
  return { recipe: result.data, text, file, position: (p) => at(p) };
}

export async function readRecipe(file: string): Promise<ParsedRecipe> {
  return parseRecipeText(await readInputText(file, RECIPE), file);
}
