import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jsonText, numberForms, parseJsonLossless, pathKey, pythonFloat } from '../../libs/json';
import { configFloatTest } from '../../libs/architectures/common';
import { typedJson } from '../helpers/json-types';

test('floats are written as Python writes them (repr: shortest digits, .0, exponent below 1e-4 and from 1e16)', () => {
  const cases: [number, string][] = [
    [0, '0.0'], [-0, '-0.0'], [10000, '10000.0'], [1e-5, '1e-05'], [1e-6, '1e-06'], [0.02, '0.02'], [0.001, '0.001'],
    [0.0001, '0.0001'], [1e30, '1e+30'], [1e16, '1e+16'], [1e15, '1000000000000000.0'], [1.5e-7, '1.5e-07'], [-2.5, '-2.5'],
    [1000000.0, '1000000.0'], [0.1 + 0.2, '0.30000000000000004'], [123456789.125, '123456789.125'],
  ];
  for (const [x, want] of cases) assert.equal(pythonFloat(x), want, String(x));
  assert.throws(() => pythonFloat(NaN), /cannot be written/);
});

test('a lossless read keeps every number literal and jsonText writes them back unchanged', () => {
  const text = '{\n  "a": 0.0,\n  "b": 10000.0,\n  "c": [1, 2.50, 1e-05],\n  "d": {"e": 1000000000000000019884624838656, "f": -0.0},\n  "g": "1.0",\n  "h": true,\n  "i": null,\n  "k\\"q": 3\n}';
  const { value, literals } = parseJsonLossless(text);
  assert.deepEqual(literals[pathKey(['c', 1])], '2.50');
  assert.equal(literals[pathKey(['d', 'e'])], '1000000000000000019884624838656');
  assert.equal(literals[pathKey(['k"q'])], '3');
  const out = jsonText(value, { literals });
  assert.deepEqual(typedJson(out), typedJson(text));
  assert.match(out, /"a": 0\.0,/);
  assert.match(out, /"e": 1000000000000000019884624838656,/);
  // JSON.stringify would lose all three.
  assert.doesNotMatch(JSON.stringify(value), /"a":0\.0|"b":10000\.0|19884624838656/);
});

test('a changed value no longer uses its literal; a declared float is never an int, whatever the input literal', () => {
  const { value, literals } = parseJsonLossless('{"rope_theta": 10000, "num_local_experts": 8.0, "rms_norm_eps": 1e-05, "x": 2.0}');
  const v = value as Record<string, unknown>;
  v.num_local_experts = 3;
  v.x = 2;
  v.router_jitter_noise = 0;
  const isFloat = configFloatTest(['rope_theta', 'rms_norm_eps', 'router_jitter_noise']);
  const out = jsonText(v, { literals, isFloat });
  assert.equal(out, '{\n  "rope_theta": 10000.0,\n  "num_local_experts": 3,\n  "rms_norm_eps": 1e-05,\n  "x": 2.0,\n  "router_jitter_noise": 0.0\n}\n');
  // numberForms carries the same decisions through a plain JSON file (plan.json).
  assert.equal(jsonText(JSON.parse(JSON.stringify(v)), { literals: numberForms(v, { literals, isFloat }) }), out);
});

test('rope parameters are floats inside rope_parameters and rope_scaling only', () => {
  const isFloat = configFloatTest([]);
  assert.equal(isFloat(['rope_parameters', 'factor']), true);
  assert.equal(isFloat(['rope_scaling', 'short_factor', 3]), true);
  assert.equal(isFloat(['rope_scaling', 'original_max_position_embeddings']), false);
  assert.equal(isFloat(['factor']), false);
});

test('jsonText lays out like JSON.stringify(v, null, 2) for plain values', () => {
  const v = { a: [], b: {}, c: [1, { d: 'x\ny', e: [true, null] }], f: 'ü' };
  assert.equal(jsonText(v), JSON.stringify(v, null, 2) + '\n');
  assert.equal(jsonText(v, { indent: 0 }), '{"a": [], "b": {}, "c": [1, {"d": "x\\ny", "e": [true, null]}], "f": "ü"}\n');
});

test('a malformed document fails as JSON.parse does', () => {
  assert.throws(() => parseJsonLossless('{"a": 1,}'), SyntaxError);
});
