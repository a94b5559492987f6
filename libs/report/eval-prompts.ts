import { ForgeError } from '../errors';
import { EVAL_PROMPTS, parseJsonInput, parseYamlInput, stripBom } from '../input';

/** One held-out prompt: text a user expects to reach a routed expert (0-based, as in the recipe's experts list). */
export interface EvalPrompt {
  expert: number;
  prompt: string;
}

const expected = (file: string) => `. Expected ${file.endsWith('.jsonl') ? 'one {"expert": N, "prompt": "..."} object per line' : 'a YAML list of {expert: N, prompts: ["..."]} entries'}`;
const fail = (file: string, message: string, line?: number, field?: string) => new ForgeError('bad_eval_prompts', `${message}${expected(file)}`, { file, line, field });

function checkExpert(v: unknown, experts: number, file: string, line: number | undefined, field: string): number {
  if (!Number.isInteger(v)) throw fail(file, `"expert" must be an integer index into the recipe's experts, got ${JSON.stringify(v)}`, line, field);
  if ((v as number) < 0 || (v as number) >= experts) throw fail(file, `expert ${v} does not exist: the recipe has ${experts} routed expert${experts === 1 ? '' : 's'} (0 to ${experts - 1})`, line, field);
  return v as number;
}

function checkPrompt(v: unknown, file: string, line: number | undefined, field: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw fail(file, `a prompt must be a non-empty string, got ${JSON.stringify(v)}`, line, field);
  return v;
}

/**
 * Held-out prompts from YAML (`- {expert: 0, prompts: [...]}`) or JSON Lines (`{"expert": 0, "prompt": "..."}`),
 * chosen by the file name; every error names the file, the line and the field.
 */
export function parseEvalPrompts(text: string, file: string, experts: number): EvalPrompt[] {
  const out: EvalPrompt[] = [];
  if (file.endsWith('.jsonl')) {
    stripBom(text).split('\n').forEach((raw, i) => {
      if (raw.trim() === '') return;
      const v = parseJsonInput(raw, file, EVAL_PROMPTS, i + 1, expected(file));
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw fail(file, 'each line must be a JSON object', i + 1);
      const o = v as Record<string, unknown>;
      const extra = Object.keys(o).filter((k) => k !== 'expert' && k !== 'prompt');
      if (extra.length) throw fail(file, `unknown key "${extra[0]}"`, i + 1, extra[0]);
      out.push({ expert: checkExpert(o.expert, experts, file, i + 1, 'expert'), prompt: checkPrompt(o.prompt, file, i + 1, 'prompt') });
    });
    return out;
  }
  if (!/\.ya?ml$/.test(file)) throw new ForgeError('bad_eval_prompts', 'held-out prompts must be a .yml/.yaml or .jsonl file', { file });
  const { doc, lc, data } = parseYamlInput(text, file, EVAL_PROMPTS, expected(file));
  const lineOf = (path: (string | number)[]) => {
    const range = (doc.getIn(path, true) as { range?: [number, number, number] } | undefined)?.range;
    return range ? lc.linePos(range[0]).line : undefined;
  };
  if (data === null || data === undefined) return out;
  if (!Array.isArray(data)) throw fail(file, 'the file must be a list', 1);
  data.forEach((entry: unknown, i) => {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw fail(file, 'each entry must be a mapping', lineOf([i]), `[${i}]`);
    const o = entry as Record<string, unknown>;
    const extra = Object.keys(o).filter((k) => k !== 'expert' && k !== 'prompts');
    if (extra.length) throw fail(file, `unknown key "${extra[0]}"`, lineOf([i]), `[${i}].${extra[0]}`);
    const expert = checkExpert(o.expert, experts, file, lineOf([i, 'expert']) ?? lineOf([i]), `[${i}].expert`);
    if (!Array.isArray(o.prompts)) throw fail(file, '"prompts" must be a list of strings', lineOf([i, 'prompts']) ?? lineOf([i]), `[${i}].prompts`);
    o.prompts.forEach((p, j) => out.push({ expert, prompt: checkPrompt(p, file, lineOf([i, 'prompts', j]), `[${i}].prompts[${j}]`) }));
  });
  return out;
}
