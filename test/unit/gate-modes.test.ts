/**
 * The gate-mode table (libs/gates/modes.ts) is the one list of modes: every consumer that must spell them
 * (the recipe schema, the stage files, the generator's schema.json and recipe comment) is compared with it
 * here, and no other source names modes, so a new row cannot be half added.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { DEFAULT_GATE_MODE, GATE_MODE_NAMES, GATE_MODES, gateModeSpec, gateModesHelp, PROMPT_STATE_KINDS } from '../../libs/gates/modes';
import { checkRecipe, parseRecipeText, RecipeSchema } from '../../libs/recipe';
import { GATES_INFO_SCHEMA, PROMPT_STATES_SCHEMA, ROUTING_SCHEMA } from '../../libs/stage-files/stage-files';
import { recipeText } from '../../tools/executors/recipe/generator';
import { ROOT } from '../helpers/tmp';

const GENERATOR_SCHEMA = join(ROOT, 'tools', 'executors', 'recipe', 'schema.json');

test('the recipe schema and the stage files accept exactly the modes of the table', () => {
  const gateMode = RecipeSchema.shape.gate_mode;
  assert.deepEqual(gateMode.unwrap().options, GATE_MODE_NAMES);
  assert.equal(gateMode.parse(undefined), DEFAULT_GATE_MODE);
  for (const schema of [GATES_INFO_SCHEMA, ROUTING_SCHEMA]) assert.deepEqual(schema.shape.gateMode.options, GATE_MODE_NAMES);
  assert.deepEqual(PROMPT_STATES_SCHEMA.shape.mode.options, PROMPT_STATE_KINDS);
  const e = (() => {
    try {
      parseRecipeText('base_model: m\ngate_mode: hiden\nexperts: []\n', '/r/moe.yml');
    } catch (err) {
      return (err as Error).message;
    }
    assert.fail('an unknown mode parses');
  })();
  assert.ok(e.includes(`expected one of ${GATE_MODE_NAMES.join(', ')}`), e);
});

test("the generator's schema.json lists the table's modes, default, help and interactive choices", () => {
  const gen = JSON.parse(readFileSync(GENERATOR_SCHEMA, 'utf8')).properties.gateMode;
  assert.deepEqual(gen.enum, GATE_MODE_NAMES, 'enum (tools/executors/recipe/schema.json)');
  assert.equal(gen.default, DEFAULT_GATE_MODE);
  assert.equal(gen.description, `How routers are built: ${gateModesHelp()}.`);
  const offered = GATE_MODE_NAMES.flatMap((m) => (gateModeSpec(m).promptLabel ? [{ value: m, label: `${m}: ${gateModeSpec(m).promptLabel}` }] : []));
  assert.deepEqual(gen['x-prompt'].items, offered);
});

test("the generated recipe's comment names every mode, and each mode it writes passes the recipe checks", () => {
  for (const m of GATE_MODE_NAMES) {
    const text = recipeText({ name: 'x', base: 'org/base', experts: 'org/a,org/b', gateMode: m, prompts: 'code;chat' });
    const comment = text.split('\n').filter((l) => l.startsWith('# ')).join(' ');
    for (const n of GATE_MODE_NAMES) assert.ok(comment.includes(n), `${n} in the comment`);
    const parsed = parseRecipeText(text, '/r/moe.yml');
    assert.equal(parsed.recipe.gate_mode, m);
    // Prompts are left out only where the mode needs none: every mode's recipe passes the checks.
    checkRecipe(parsed, { allowIdenticalModels: true });
    assert.equal(/positive_prompts:/.test(text), GATE_MODES[m].needsPrompts, m);
  }
});

test('each row is coherent: random modes store no states, hidden states have a reduction', () => {
  for (const m of GATE_MODE_NAMES) {
    const s = GATE_MODES[m];
    assert.equal(s.states === 'none', s.random !== null, m);
    assert.equal(s.states === 'hidden', s.reduction !== null, m);
    assert.ok(s.routedState.length > 0, m);
  }
});

test('the recipe checks skip the prompt checks exactly for the modes that need no prompts', () => {
  for (const m of GATE_MODE_NAMES) {
    const parsed = parseRecipeText(`base_model: m/base\ngate_mode: ${m}\nexperts:\n  - source_model: m/a\n  - source_model: m/b\n`, '/r/moe.yml');
    const check = () => checkRecipe(parsed);
    if (GATE_MODES[m].needsPrompts) assert.throws(check, /Expert 0 has no positive prompts/, m);
    else check();
  }
});

/** Sources outside the table that compare a gate mode with a name, or list two mode names: none (libs, tools, bench). */
test('no source outside the gate-mode table names gate modes', () => {
  const allowed = new Set(['libs/gates/modes.ts', 'tools/executors/recipe/schema.json']);
  const names = GATE_MODE_NAMES.join('|');
  const compare = new RegExp(`(gateMode|gate_mode)\\s*[!=]==?\\s*['"](${names})['"]|(gateMode|gate_mode)\\.startsWith`);
  const literal = new RegExp(`['"](${names})['"]`, 'g');
  // Names that are modes only (not also prompt-state kinds), compared with anything.
  const modeOnly = GATE_MODE_NAMES.filter((m) => !(PROMPT_STATE_KINDS as readonly string[]).includes(m)).join('|');
  const compareAny = new RegExp(`[!=]==?\\s*['"](${modeOnly})['"]|['"](${modeOnly})['"]\\s*[!=]==?`);
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'node_modules') walk(p);
      } else if (/\.(ts|js|json)$/.test(e.name) && !allowed.has(relative(ROOT, p))) {
        readFileSync(p, 'utf8').split('\n').forEach((line, i) => {
          const listed = new Set([...line.matchAll(literal)].map((x) => x[1]));
          if (compare.test(line) || compareAny.test(line) || listed.size >= 2) offenders.push(`${relative(ROOT, p)}:${i + 1}: ${line.trim()}`);
        });
      }
    }
  };
  for (const d of ['libs', 'tools', 'bench']) walk(join(ROOT, d));
  assert.deepEqual(offenders, []);
});
