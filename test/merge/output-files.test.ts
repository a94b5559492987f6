/**
 * The JSON and companion files of an output folder, as the tools that load it read them: numbers typed as the
 * Python reference writes them, and a chat base's template and generation settings carried over unchanged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe } from '../helpers/cli';
import { FIXTURES, ROOT, TINY, copyModel, tempDir } from '../helpers/tmp';
import { numberKinds, typedJson } from '../helpers/json-types';

const PARITY = join(FIXTURES, 'parity');
const typedFile = (f: string) => typedJson(readFileSync(f, 'utf8'));

/** Float-typed fields of transformers 5.17's MixtralConfig, checked on their own (not from our tables). */
const MIXTRAL_FLOATS = ['attention_dropout', 'initializer_range', 'rms_norm_eps', 'router_aux_loss_coef', 'router_jitter_noise'];

test('every JSON file we write types its numbers as the reference does: a float stays a float, an int an int', async () => {
  const out = join(tempDir(), 'out');
  // A small shard size, so the index file is written too.
  const r = await mergekitMoe(['mixtral-cheap_embed.yml', out, '--out-shard-size', '200k'], PARITY);
  assert.equal(r.exitCode, 0, r.stderr);
  const jsonFiles = readdirSync(out).filter((f) => f.endsWith('.json'));
  assert.ok(jsonFiles.includes('model.safetensors.index.json') && jsonFiles.includes('config.json'), jsonFiles.join(', '));
  for (const f of jsonFiles) typedFile(join(out, f)); // each one parses

  const ours = numberKinds(typedFile(join(out, 'config.json')));
  for (const manifest of ['mixtral-cheap_embed.classic.manifest.json', 'mixtral-hidden.classic.manifest.json', 'mixtral-random-noise.fused.manifest.json']) {
    const ref = numberKinds((typedFile(join(PARITY, manifest)) as { config_json: unknown }).config_json);
    assert.ok(ref.size >= 15, `${manifest}: ${ref.size} numbers`);
    for (const [key, kind] of ref) {
      if (key === 'num_local_experts' || key === 'num_experts_per_tok') continue; // recipes differ; ints either way
      assert.equal(ours.get(key), kind, `config.json ${key}: ${manifest} has ${kind}, we wrote ${ours.get(key) ?? 'nothing'}`);
    }
  }
  for (const k of MIXTRAL_FLOATS) assert.equal(ours.get(k), 'float', `config.json ${k}`);
  assert.match(readFileSync(join(out, 'config.json'), 'utf8'), /"router_jitter_noise": 0\.0,\n/);
  assert.match(readFileSync(join(out, 'config.json'), 'utf8'), /"rope_parameters": \{\n    "rope_theta": 10000\.0,/);

  const index = numberKinds(typedFile(join(out, 'model.safetensors.index.json')));
  assert.equal(index.get('metadata.total_size'), 'int');
  const tc = numberKinds(typedFile(join(out, 'tokenizer_config.json')));
  assert.equal(tc.get('model_max_length'), 'int');
});

test('a chat base: chat template, generation config (eos list) and tokenizer numbers come through unchanged', async () => {
  const d = tempDir();
  const base = copyModel(TINY('a'), join(d, 'chat-base'));
  const template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}";
  writeFileSync(join(base, 'chat_template.jinja'), template);
  writeFileSync(join(base, 'chat_template.json'), JSON.stringify({ chat_template: template }, null, 2) + '\n');
  const gen = '{\n  "bos_token_id": 0,\n  "do_sample": true,\n  "eos_token_id": [\n    1,\n    3\n  ],\n  "temperature": 0.6,\n  "top_p": 1.0,\n  "transformers_version": "4.57.6"\n}\n';
  writeFileSync(join(base, 'generation_config.json'), gen);
  const tcText = readFileSync(join(base, 'tokenizer_config.json'), 'utf8').replace('"model_max_length": 128', '"model_max_length": 1000000000000000019884624838656,\n  "clean_up_tokenization_spaces": false,\n  "x_scale": 1.0');
  writeFileSync(join(base, 'tokenizer_config.json'), tcText);
  const recipe = readFileSync(join(PARITY, 'mixtral-cheap_embed.yml'), 'utf8').replace(/^base_model: .*$/m, 'base_model: chat-base').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  writeFileSync(join(d, 'moe.yml'), recipe);
  const out = join(d, 'out');
  const r = await mergekitMoe(['moe.yml', out], d);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(readFileSync(join(out, 'chat_template.jinja'), 'utf8'), template);
  assert.equal(readFileSync(join(out, 'chat_template.json'), 'utf8'), readFileSync(join(base, 'chat_template.json'), 'utf8'));
  assert.equal(readFileSync(join(out, 'generation_config.json'), 'utf8'), gen);
  const tc = readFileSync(join(out, 'tokenizer_config.json'), 'utf8');
  assert.match(tc, /"model_max_length": 1000000000000000019884624838656,/);
  assert.match(tc, /"x_scale": 1\.0,/);
  assert.equal(JSON.parse(tc).pad_token, '<s>');

  // An edited template in the base reaches the output on the next build (the base's content id covers it).
  writeFileSync(join(base, 'chat_template.jinja'), template + '\n');
  const again = await mergekitMoe(['moe.yml', out], d);
  assert.equal(again.exitCode, 0, again.stderr);
  assert.equal(readFileSync(join(out, 'chat_template.jinja'), 'utf8'), template + '\n');

  // --no-copy-tokenizer leaves the tokenizer and its template out, but keeps the model's generation settings.
  const bare = join(d, 'bare');
  const b = await mergekitMoe(['moe.yml', bare, '--no-copy-tokenizer'], d);
  assert.equal(b.exitCode, 0, b.stderr);
  const files = readdirSync(bare);
  assert.ok(!files.includes('chat_template.jinja') && !files.includes('tokenizer_config.json'), files.join(', '));
  assert.equal(readFileSync(join(bare, 'generation_config.json'), 'utf8'), gen);
});

test('the tiny-clowncar example: config.json has every float-typed key as a float', async () => {
  const out = join(tempDir(), 'out');
  const r = await mergekitMoe(['moe.yml', out], join(ROOT, 'workspace-models', 'tiny-clowncar'));
  assert.equal(r.exitCode, 0, r.stderr);
  const kinds = numberKinds(typedFile(join(out, 'config.json')));
  for (const k of [...MIXTRAL_FLOATS, 'rope_theta', 'rope_parameters.rope_theta']) assert.equal(kinds.get(k), 'float', `config.json ${k}`);
  for (const [k, kind] of kinds) if (kind === 'float') assert.ok([...MIXTRAL_FLOATS, 'rope_theta', 'rope_parameters.rope_theta'].includes(k), `unexpected float ${k}`);
});
