import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { parseModelReference, locateReference, formatReference } from '../../libs/resolve';
import { ModelError } from '../../libs/errors';

test('org/name and org/name@revision', () => {
  assert.deepEqual(parseModelReference('org/name'), { raw: 'org/name', path: 'org/name', revision: null, overrideArchitecture: null });
  const r = parseModelReference('org/name@v1.0');
  assert.equal(r.path, 'org/name');
  assert.equal(r.revision, 'v1.0');
  assert.equal(formatReference(r), 'org/name@v1.0');
});

test('the mapping form {model: {path, revision}}', () => {
  const r = parseModelReference({ model: { path: 'org/name', revision: 'abc' }, override_architecture: 'MistralForCausalLM' });
  assert.equal(r.path, 'org/name');
  assert.equal(r.revision, 'abc');
  assert.equal(r.overrideArchitecture, 'MistralForCausalLM');
  assert.equal(parseModelReference({ model: { path: 'org/name' } }).revision, null);
  assert.throws(() => parseModelReference({ model: { path: 'org/name@a', revision: 'b' } }), /revision twice/);
});

test('more than one @ is refused with the reference tool message', () => {
  assert.throws(() => parseModelReference('org/name@a@b'), (e: Error) => e instanceof ModelError && /Invalid model path - multiple @: org\/name@a@b/.test(e.message));
});

test('LoRA references are refused clearly', () => {
  assert.throws(() => parseModelReference('org/base+org/adapter'), /names a LoRA adapter; mergekit-moe never merges LoRAs/);
  assert.throws(() => parseModelReference({ model: { path: 'org/base' }, lora: { path: 'org/adapter' } }), /LoRA/);
  assert.throws(() => parseModelReference('a+b+c'), /Can't parse/);
});

test('local paths resolve against the base dir; a missing one is not taken for a repo', () => {
  const fixtures = join(__dirname, '..', 'fixtures');
  assert.deepEqual(locateReference(parseModelReference('tiny-llama/tiny-a'), fixtures), { kind: 'local', dir: join(fixtures, 'tiny-llama', 'tiny-a') });
  assert.deepEqual(locateReference(parseModelReference('org/not-here'), fixtures), { kind: 'hub', repo: 'org/not-here' });
  assert.throws(() => locateReference(parseModelReference('./not-here'), fixtures), /local folder .*not-here does not exist/);
  assert.throws(() => locateReference(parseModelReference('a/b/c'), fixtures), /not a Hugging Face repo id/);
});
