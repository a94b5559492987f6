/** The one place in the project that imports onnxruntime-node. */
import './no-telemetry'; // first: onnxruntime must never see telemetry on
import type * as Ort from 'onnxruntime-node';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ForgeError } from '../errors';

export type Device = 'cpu' | 'cuda' | 'webgpu';
export const DEVICES: readonly Device[] = ['cpu', 'cuda', 'webgpu'];

export type Session = Ort.InferenceSession;

// Loaded at first use: the command's own process only forks the pass (its native library is ~25 ms to load).
let loaded: typeof Ort | undefined;
const ort = (): typeof Ort => (loaded ??= require('onnxruntime-node') as typeof Ort);

/** Loads onnxruntime now (a forward worker, at boot: before its first request, on a core that idles then). */
export function loadBackend(): void {
  ort();
}

function nativeFolder(): string {
  return join(dirname(require.resolve('onnxruntime-node/package.json')), 'bin', 'napi-v6', process.platform, process.arch);
}

/** Backends this install can run: bundled ones, plus CUDA when its provider library was installed. */
export function availableBackends(): string[] {
  const out: string[] = [];
  for (const b of ort().listSupportedBackends()) {
    if (b.bundled) out.push(b.name);
    else if (b.name === 'cuda' && existsSync(join(nativeFolder(), 'libonnxruntime_providers_cuda.so'))) out.push(b.name);
  }
  return out;
}

/** A device option as the forward pass takes it: auto, as the reference resolves it, is the GPU when there is one. */
export function resolveDevice(device: string | undefined): Device {
  return (device === 'auto' ? (availableBackends().includes('cuda') ? 'cuda' : 'cpu') : device ?? 'cpu') as Device;
}

/** The execution providers for a device, or a ForgeError naming what this install offers. */
export function executionProviders(device: string): string[] {
  if (!(DEVICES as readonly string[]).includes(device)) {
    throw new ForgeError('unknown_device', `unknown device "${device}" (expected one of: ${DEVICES.join(', ')})`, { field: 'device' });
  }
  // Every onnxruntime-node build has the CPU provider: no need to load onnxruntime (~25 ms) to say so.
  if (device === 'cpu') return ['cpu'];
  const available = availableBackends();
  if (!available.includes(device)) {
    const hint = device === 'cuda'
      ? ' CUDA needs onnxruntime-node installed with its CUDA 12 binaries: run its install script with ' +
        'ONNXRUNTIME_NODE_INSTALL=cuda12 (or `npm install onnxruntime-node --onnxruntime-node-install=cuda12`; ' +
        'the older ONNXRUNTIME_NODE_INSTALL_CUDA=v12 also works), and allow that script to run (package.json "allowScripts").'
      : '';
    throw new ForgeError('device_unavailable', `device "${device}" is not available in this onnxruntime-node install (available: ${available.join(', ')}).${hint}`, { field: 'device' });
  }
  return device === 'cpu' ? ['cpu'] : [device, 'cpu'];
}

export interface SessionSettings {
  device: Device;
  threads: number;
  /** Keep activation memory between runs (default true); a session that runs once gains nothing from it. */
  arena?: boolean;
}

function options(s: SessionSettings): Ort.InferenceSession.SessionOptions {
  return {
    executionProviders: executionProviders(s.device),
    intraOpNumThreads: s.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    // The arena keeps the activations' memory from run to run (a session serves every layer of its shape):
    // without it each run's large buffers are fresh pages, and faulting them in cost about a third of a packed
    // layer's CPU time (TinyLlama's shape, 1,156 tokens: 1.2-1.3 s against 0.8 s). It goes back with the session.
    enableCpuMemArena: s.arena ?? true,
    // Spinning workers keep a core busy after each run, which the next layer's reading and widening need.
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
}

/** A GPU provider that is installed but cannot start (no adapter, no driver) is the user's to fix: say so. */
async function create(model: string | Uint8Array, s: SessionSettings, externalData?: ExternalData): Promise<Session> {
  const opts = { ...options(s), ...(externalData ? { externalData } : {}) };
  try {
    return typeof model === 'string' ? await ort().InferenceSession.create(model, opts) : await ort().InferenceSession.create(model, opts);
  } catch (e) {
    if (s.device === 'cpu') throw e;
    const first = String((e as Error).message ?? e).split('\n')[0];
    throw new ForgeError('device_failed', `device "${s.device}" could not start an onnxruntime session: ${first}`, { field: 'device' });
  }
}

/** Initializer bytes by the external-data location the model names; onnxruntime copies them while it makes the session. */
export type ExternalData = { path: string; data: Uint8Array }[];

/** A session from model bytes whose weights are embedded, or given from memory as external data. */
export async function sessionFromBytes(bytes: Uint8Array, s: SessionSettings, externalData?: ExternalData): Promise<Session> {
  return create(bytes, s, externalData);
}

export function floatTensor(data: Float32Array, dims: number[]): Ort.Tensor {
  return new (ort().Tensor)('float32', data, dims);
}

export function int64Tensor(data: BigInt64Array, dims: number[]): Ort.Tensor {
  return new (ort().Tensor)('int64', data, dims);
}
