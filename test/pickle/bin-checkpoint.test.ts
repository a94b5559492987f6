import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtemp, writeFile, copyFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { SafetensorsWeights, readTensorBytes } from '../../libs/safetensors';
import { openBinCheckpoint, readBinFile, unpickle, PickleError } from '../../libs/pickle';

const fixtures = join(__dirname, '..', 'fixtures');
const binDir = join(fixtures, 'tiny-llama-bin', 'tiny-a');
const stDir = join(fixtures, 'tiny-llama', 'tiny-a');

test('every tensor of the .bin equals the safetensors twin, byte for byte', async () => {
  const bin = await openBinCheckpoint(binDir);
  const st = await SafetensorsWeights.openFolder(stDir);
  assert.deepEqual([...bin.names()].sort(), [...st.names()].sort());
  for (const name of st.names()) {
    const a = bin.get(name);
    const b = st.get(name);
    assert.equal(a.dtype, b.dtype, name);
    assert.deepEqual(a.shape, b.shape, name);
    assert.equal(a.byteLength, b.byteLength, name);
    assert.ok((await readTensorBytes(a)).equals(await readTensorBytes(b)), `bytes of ${name}`);
  }
});

test('an unknown pickle global is refused, naming the global and the file', async () => {
  const file = join(fixtures, 'tiny-llama-bin', 'unknown-global', 'pytorch_model.bin');
  await assert.rejects(readBinFile(file), (e: Error) => {
    assert.ok(e instanceof PickleError);
    assert.match(e.message, /__main__\.NotATensor/);
    assert.ok(e.message.includes(file), e.message);
    return true;
  });
});

test('sharded .bin checkpoints are read through pytorch_model.bin.index.json', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bin-shards-'));
  try {
    await copyFile(join(binDir, 'pytorch_model.bin'), join(dir, 'pytorch_model-00001-of-00001.bin'));
    const names = (await readBinFile(join(binDir, 'pytorch_model.bin'))).tensors.map((t) => t.name);
    const weight_map = Object.fromEntries(names.map((n) => [n, 'pytorch_model-00001-of-00001.bin']));
    await writeFile(join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: {}, weight_map }));
    const ck = await openBinCheckpoint(dir);
    assert.equal(ck.names().length, names.length);
    weight_map[names[0]!] = 'other.bin';
    await writeFile(join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: {}, weight_map }));
    await assert.rejects(openBinCheckpoint(dir), /weight file listed for this model does not exist/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// Hand-built pickles for the cases torch fixtures do not cover.
function pkl(...parts: (number[] | string)[]): Buffer {
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
}

test('non-contiguous strides are refused clearly', async () => {
  const { readBinTensors } = await import('../../libs/pickle');
  // A transposed 2x3 view: stride (1, 2).
  const data = pkl(
    [0x80, 0x02, 0x7d, 0x28], // PROTO 2, EMPTY_DICT, MARK
    [0x8c, 1], 'w',
    'ctorch._utils\n_rebuild_tensor_v2\n',
    [0x28, 0x28], [0x8c, 7], 'storage', 'ctorch\nFloatStorage\n', [0x8c, 1], '0', [0x8c, 3], 'cpu', [0x4b, 6, 0x74, 0x51], // persistent id, BINPERSID
    [0x4b, 0], [0x4b, 2, 0x4b, 3, 0x86], [0x4b, 1, 0x4b, 2, 0x86], [0x89, 0x4e, 0x74, 0x52], // offset, size, stride, False, None -> REDUCE
    [0x75, 0x2e], // SETITEMS, STOP
  );
  const zip = makeStoredZip([['archive/data.pkl', data], ['archive/data/0', Buffer.alloc(24)]]);
  await assert.rejects(readBinTensors({ name: 'mem.bin', size: zip.length, read: async (o, l) => zip.subarray(o, o + l) }), /not contiguous.*stride \[1, 2\]/);
});

test('the unpickler refuses object creation and stray globals without running anything', () => {
  const opts = { file: 'x.pkl', persistentLoad: () => null };
  assert.throws(() => unpickle(pkl([0x80, 2], 'cos\nsystem\n', [0x2e]), opts), /refused pickle global os\.system/);
  assert.throws(() => unpickle(pkl([0x80, 2], 'cbuiltins\neval\n', [0x2e]), opts), /builtins\.eval/);
  assert.deepEqual(unpickle(pkl([0x80, 2, 0x5d, 0x4b, 7, 0x61, 0x2e]), opts), [7]);
});

/** A stored-only zip (no compression), enough for the reader tests. */
function makeStoredZip(files: [string, Buffer][]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of files) {
    const n = Buffer.from(name);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0); lh.writeUInt32LE(data.length, 18); lh.writeUInt32LE(data.length, 22); lh.writeUInt16LE(n.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0); ch.writeUInt32LE(data.length, 20); ch.writeUInt32LE(data.length, 24); ch.writeUInt16LE(n.length, 28); ch.writeUInt32LE(offset, 42);
    locals.push(lh, n, data);
    centrals.push(ch, n);
    offset += 30 + n.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(files.length, 8); end.writeUInt16LE(files.length, 10); end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}
