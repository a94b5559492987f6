/**
 * What the bench ran on, so figures from different machines can be compared: CPU model and the flags that
 * change kernel speed, cores, memory, load average, and the disk's copy rate in the bench's own temp folder.
 */
import { closeSync, fsyncSync, openSync, readFileSync, readSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { availableParallelism, cpus, freemem, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';

/** The flags that matter for ORT's Gemms and the float kernels (x86; absent elsewhere). */
export const FLAGS = ['avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16', 'amx_int8'] as const;

export interface CpuInfo {
  model: string | null;
  /** FLAGS the first processor lists, in FLAGS order. */
  flags: string[];
  /** Logical processors ("processor" entries). */
  logical: number;
  /** Distinct (physical id, core id) pairs, or null when cpuinfo does not say (VMs, ARM). */
  physical: number | null;
}

/** /proc/cpuinfo's text: blocks separated by blank lines, `key\t: value` lines. */
export function parseCpuInfo(text: string): CpuInfo {
  const blocks = text.split(/\n\s*\n/).map((b) => {
    const m = new Map<string, string>();
    for (const line of b.split('\n')) {
      const i = line.indexOf(':');
      if (i > 0) m.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
    }
    return m;
  }).filter((m) => m.has('processor'));
  const first = blocks[0];
  const have = new Set((first?.get('flags') ?? '').split(/\s+/));
  const cores = new Set(blocks.filter((b) => b.has('core id')).map((b) => `${b.get('physical id') ?? 0}/${b.get('core id')}`));
  return {
    model: first?.get('model name') ?? null,
    flags: FLAGS.filter((f) => have.has(f)),
    logical: blocks.length,
    physical: cores.size ? cores.size : null,
  };
}

export interface DiskCopy {
  folder: string;
  bytes: number;
  /** Writing the source file once (fresh blocks; not counted). */
  generateSeconds: number;
  /** Each timed copy; the figure is the fastest (the machine is shared). */
  seconds: number[];
  bestMBps: number;
}

export interface Machine {
  cpuModel: string | null;
  flags: string[];
  logicalCpus: number;
  physicalCores: number | null;
  /** What Node lets this process use (cgroup / affinity aware). */
  availableParallelism: number;
  memGiB: number;
  freeGiB: number;
  loadAverageBefore: number[];
  loadAverageAfter: number[] | null;
  disk: DiskCopy | { folder: string; skipped: string };
  node: string;
  platform: string;
}

const r2 = (x: number) => +x.toFixed(2);
const CHUNK = 8 * 2 ** 20;
/**
 * The copy's buffer: 128 KiB, coreutils' own. Through an 8 MiB one the bytes went through main memory twice more and the
 * figure was the memory's more than the disk's (3-4x lower on a busy 2-core VM).
 */
const COPY_BUFFER = 128 * 2 ** 10;

/** Copies src to dst in reads and writes of buf's size (no copy_file_range / reflink shortcut), then fsyncs dst. */
function copyWithFsync(src: string, dst: string, buf: Buffer): number {
  const t0 = performance.now();
  const i = openSync(src, 'r');
  const o = openSync(dst, 'w');
  try {
    for (let n; (n = readSync(i, buf, 0, buf.length, null)) > 0;) writeSync(o, buf, 0, n);
    fsyncSync(o);
  } finally {
    closeSync(i);
    closeSync(o);
  }
  return (performance.now() - t0) / 1000;
}

/**
 * The disk's copy rate in `folder`: a file of `bytes` written once (random blocks, fsynced), then copied and
 * fsynced `runs` times; best of the runs. The source is likely still in the page cache, so this is mostly the
 * write + fsync rate, as the write section's stream-copy baseline is.
 */
export function diskCopyRate(folder: string, bytes = 512 * 2 ** 20, runs = 3): DiskCopy | { folder: string; skipped: string } {
  const fs = statfsSync(folder);
  if (fs.bavail * fs.bsize < 3 * bytes) return { folder, skipped: `under ${(3 * bytes / 1e9).toFixed(1)} GB free` };
  const src = join(folder, 'disk-rate.src');
  const dst = join(folder, 'disk-rate.dst');
  const buf = Buffer.allocUnsafe(CHUNK);
  try {
    const t0 = performance.now();
    const o = openSync(src, 'w');
    try {
      for (let left = bytes; left > 0; left -= CHUNK) writeSync(o, randomFillSync(buf), 0, Math.min(CHUNK, left));
      fsyncSync(o);
    } finally {
      closeSync(o);
    }
    const generateSeconds = (performance.now() - t0) / 1000;
    const seconds: number[] = [];
    for (let k = 0; k < runs; k++) {
      seconds.push(copyWithFsync(src, dst, buf.subarray(0, COPY_BUFFER)));
      rmSync(dst, { force: true });
    }
    return { folder, bytes, generateSeconds: +generateSeconds.toFixed(3), seconds: seconds.map((x) => +x.toFixed(4)), bestMBps: r2(bytes / 1e6 / Math.min(...seconds)) };
  } finally {
    rmSync(src, { force: true });
    rmSync(dst, { force: true });
  }
}

function readCpuInfo(): CpuInfo {
  try {
    return parseCpuInfo(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return { model: null, flags: [], logical: 0, physical: null };
  }
}

/** The machine with its load average now as the load after (a copy: a per-size file's, after its section). */
export function withLoadAfter(m: Machine, now: number[] = loadavg()): Machine {
  return { ...m, loadAverageAfter: now.map(r2) };
}

/** Everything but the disk rate and the load after: cheap, taken before the first section. */
export function machineFacts(tmp: string): Machine {
  const info = readCpuInfo();
  return {
    cpuModel: info.model ?? cpus()[0]?.model ?? null,
    flags: info.flags,
    logicalCpus: info.logical || cpus().length,
    physicalCores: info.physical,
    availableParallelism: availableParallelism(),
    memGiB: r2(totalmem() / 2 ** 30),
    freeGiB: r2(freemem() / 2 ** 30),
    loadAverageBefore: loadavg().map(r2),
    loadAverageAfter: null,
    disk: { folder: tmp, skipped: 'not measured yet' },
    node: process.version,
    platform: process.platform,
  };
}

export function formatMachine(m: Machine): string {
  const d = m.disk;
  const disk = 'skipped' in d
    ? `disk copy rate: skipped (${d.skipped})`
    : `disk copy rate: ${d.bestMBps.toFixed(0)} MB/s (${(d.bytes / 2 ** 20).toFixed(0)} MiB read+write+fsync in ${d.folder}, best of ${d.seconds.length}: ${d.seconds.map((s) => s.toFixed(3)).join(' / ')} s; writing the source first took ${d.generateSeconds.toFixed(2)} s)`;
  return [
    `machine: ${m.cpuModel ?? 'unknown CPU'}; flags: ${m.flags.length ? m.flags.join(' ') : 'none of ' + FLAGS.join(' ')}`,
    `  ${m.logicalCpus} logical CPUs${m.physicalCores !== null ? `, ${m.physicalCores} physical cores` : ''}, ${m.availableParallelism} usable by this process; ${m.memGiB} GiB memory, ${m.freeGiB} GiB available; node ${m.node} on ${m.platform}`,
    `  load average (1/5/15 min) at the start, before the disk copy and the first section: ${m.loadAverageBefore.join(' ')}${m.loadAverageAfter ? `; after the last section: ${m.loadAverageAfter.join(' ')}` : ''}`,
    `  ${disk}`,
  ].join('\n');
}
