/** The dtype table (libs/safetensors/dtype-table.ts) against its consumers and against the formats' own facts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bf16BitsToF32, dtypeFromName, DTYPE_SIZES, dtypeToTorchName, f16BitsToF32, FLOAT_DTYPES, OUTPUT_DTYPE_NAMES, OUTPUT_DTYPES, WEIGHT_DTYPES } from '../../libs/safetensors/dtype';
import { DTYPE_NAMES, parseRecipeText } from '../../libs/recipe';
import { PLAN_SCHEMA } from '../../libs/stage-files/stage-files';
import { ROOT } from '../helpers/tmp';

test('each float dtype has its safetensors size and its largest finite value', () => {
  for (const d of WEIGHT_DTYPES) assert.ok(DTYPE_SIZES[d], d);
  assert.equal(FLOAT_DTYPES.F16.max, f16BitsToF32(0x7bff));
  assert.equal(FLOAT_DTYPES.BF16.max, bf16BitsToF32(0x7f7f));
  assert.equal(FLOAT_DTYPES.F32.max, new Float32Array(new Uint32Array([0x7f7fffff]).buffer)[0]);
});

test('torch names and safetensors names map both ways; config aliases are read', () => {
  for (const d of OUTPUT_DTYPES) {
    assert.equal(dtypeFromName(dtypeToTorchName(d)), d);
    assert.equal(dtypeFromName(`torch.${dtypeToTorchName(d)}`), d);
  }
  assert.equal(dtypeFromName('float'), 'F32');
  assert.equal(dtypeFromName('half'), 'F16');
  assert.deepEqual(OUTPUT_DTYPE_NAMES, ['bfloat16', 'float16', 'float32']);
  assert.throws(() => dtypeFromName('float64'), /unknown dtype "float64": expected bfloat16, float16 or float32$/);
  assert.throws(() => dtypeFromName('int64'), /expected bfloat16, float16 or float32/);
});

test('the recipe accepts the reference dtype names (int64 too, refused later), the generator offers the output dtypes', () => {
  assert.deepEqual(DTYPE_NAMES, [...OUTPUT_DTYPE_NAMES, 'int64']);
  for (const n of DTYPE_NAMES) assert.equal(parseRecipeText(`base_model: m\nexperts: []\ndtype: torch.${n}\n`, '/r/moe.yml').recipe.dtype, `torch.${n}`);
  assert.throws(() => parseRecipeText('base_model: m\nexperts: []\ndtype: float64\n', '/r/moe.yml'), /expected one of bfloat16, float16, float32, int64 \(optionally prefixed with "torch\."\)/);
  const gen = JSON.parse(readFileSync(join(ROOT, 'tools', 'executors', 'recipe', 'schema.json'), 'utf8')).properties.dtype;
  assert.deepEqual(gen.enum, OUTPUT_DTYPE_NAMES, 'tools/executors/recipe/schema.json');
});

test('a plan read back names only dtypes a merge writes', () => {
  const plan = (dtype: string, outDtype: string | null) => ({
    version: 1, architecture: 'Mixtral', layout: 'classic', outDtype, config: {}, models: [{ key: 'k', ref: 'r' }], maxShardBytes: 0, shardOrder: 'reference', warnings: [],
    tensors: [{ name: 't', dtype, shape: [1], parts: [{ kind: 'zeros', elements: 1 }], group: 'base' }],
  });
  assert.ok(PLAN_SCHEMA.safeParse(plan('BF16', 'BF16')).success);
  assert.ok(PLAN_SCHEMA.safeParse(plan('F64', null)).success);
  assert.ok(!PLAN_SCHEMA.safeParse(plan('I64', null)).success);
  assert.ok(!PLAN_SCHEMA.safeParse(plan('BF16', 'F64')).success);
});
