import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { FLAGS, diskCopyRate, formatMachine, machineFacts, parseCpuInfo, withLoadAfter } from '../../bench/machine';
import { tempDir } from '../helpers/tmp';

// Trimmed /proc/cpuinfo blocks as Linux prints them (tab before the colon, a blank line between processors).
const block = (n: number, model: string, flags: string, core: number) => `processor\t: ${n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: ${model}
physical id\t: 0
core id\t\t: ${core}
cpu cores\t: 2
flags\t\t: ${flags}
bugs\t\t: sysret_ss_attrs spectre_v1
`;

const BASE = 'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm rep_good nopl cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy';
const AVX2 = `${BASE} avx2 bmi1 bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves`;
// Genoa-class: avx512 with bf16 and vnni, no AMX; also avx512 flags whose names share a prefix with the ones we keep.
const AVX512 = `${AVX2} avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq`;

test('cpuinfo of an AMD EPYC with avx2 only: its model, avx2 and nothing of avx512 or AMX', () => {
  const info = parseCpuInfo([0, 1].map((n) => block(n, 'AMD EPYC', AVX2, n)).join('\n'));
  assert.deepEqual(info, { model: 'AMD EPYC', flags: ['avx2'], logical: 2, physical: 2 });
});

test('cpuinfo of an avx512 CPU: avx512f, avx512_bf16 and avx512_vnni found, the other avx512 flags not listed', () => {
  const text = [0, 1, 2, 3].map((n) => block(n, 'AMD EPYC 9554 64-Core Processor', AVX512, n >> 1)).join('\n');
  const info = parseCpuInfo(text);
  assert.equal(info.model, 'AMD EPYC 9554 64-Core Processor');
  assert.deepEqual(info.flags, ['avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni']);
  assert.equal(info.logical, 4);
  assert.equal(info.physical, 2, 'two hyperthreads per core');
});

test('cpuinfo with AMX lists its three flags; one without model name or core ids (ARM, some VMs) says so', () => {
  const amx = parseCpuInfo(block(0, 'Intel(R) Xeon(R) Platinum 8480+', `${AVX512} amx_bf16 amx_tile amx_int8`, 0));
  assert.deepEqual(amx.flags, FLAGS.slice());
  const arm = parseCpuInfo('processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\nHardware\t: foo\n');
  assert.deepEqual(arm, { model: null, flags: [], logical: 2, physical: null });
});

test('the disk copy rate: the runs asked for, a rate from the best, nothing left in the folder', () => {
  const dir = tempDir();
  const d = diskCopyRate(dir, 3 * 2 ** 20, 2);
  assert.ok(!('skipped' in d), JSON.stringify(d));
  assert.equal(d.bytes, 3 * 2 ** 20);
  assert.equal(d.seconds.length, 2);
  assert.ok(d.bestMBps > 0);
  assert.deepEqual(readdirSync(dir), []);
  const m = { ...machineFacts(dir), disk: d };
  assert.match(formatMachine(m), /disk copy rate: \d+ MB\/s \(3 MiB read\+write\+fsync in .*, best of 2: /);
});

test("a per-size file states the load average after its section, rounded, without changing the run's machine record", () => {
  const m = machineFacts(tempDir());
  const after = withLoadAfter(m, [1.234, 0.5, 2.999]);
  assert.deepEqual(after.loadAverageAfter, [1.23, 0.5, 3]);
  assert.equal(m.loadAverageAfter, null, 'the record the run goes on with keeps no load after yet');
  assert.deepEqual({ ...after, loadAverageAfter: null }, m, 'every other fact as it was');
  assert.match(formatMachine(after), /after the last section: 1\.23 0\.5 3/);
  assert.equal(withLoadAfter(m).loadAverageAfter!.length, 3, 'the load now, where none is given');
});
