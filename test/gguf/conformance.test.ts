/**
 * Our GGUF against llama.cpp's converter, for each architecture and outtype: every metadata key and value but the
 * authorship ones, every tensor's name, shape, type and bytes (test/fixtures/gguf, recorded from the converter
 * run on the same output folder).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readGguf } from '../../libs/gguf/reader';
import { buildRecorded } from '../helpers/gguf-build';
import { metadataDifferences, readIndex, readManifest, tensorDifferences } from '../helpers/gguf-manifest';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-gguf-conformance-');
const index = readIndex();

// Keys that say who made the file and what it is called (name, tags, size label, …); the issue lets them differ.
const CONTENT_GENERAL = new Set(['general.architecture', 'general.type', 'general.file_type', 'general.quantization_version', 'general.alignment']);
const compared = (k: string) => !k.startsWith('general.') || CONTENT_GENERAL.has(k);

for (const [arch, entry] of Object.entries(index.outputs)) {
  for (const [type, manifestName] of Object.entries(entry.types)) {
    test(`${arch} --gguf ${type}: the converter's keys and tensors`, async () => {
      const out = join(dir, `${arch}-${type}`);
      await buildRecorded(arch, dir, out, ['--gguf', type]);
      const file = join(out, `model-${type}.gguf`);
      const gguf = await readGguf(file);
      const want = readManifest(manifestName);
      assert.equal(gguf.version, want.version);
      assert.deepEqual(metadataDifferences(gguf.metadata, want.metadata, compared), []);
      assert.deepEqual(await tensorDifferences(file, gguf, want.tensors!), []);
    });
  }
}
