/**
 * The one path for per-prompt states through the base: each text's entry read from the content-addressed cache,
 * all misses computed in one forward pass and stored, under the base's cache lock (two merges on one base
 * compute a prompt once). Prompt states (hidden gates, the report) and router inputs (gate_mode fit) differ only
 * in what the entry is, its key's extra material and the forward pass that computes it.
 */
import type { ModelSource } from '../architectures';
import { ContentCache, withLock } from '../cache';
import type { Device } from '../forward';
import { resolveDevice, stopForwardWorker } from '../forward';
import { contentId } from '../resolve';
import { loadTokenizer } from '../tokenizer';
import { floatKernels } from '../safetensors';
import { mapLimit } from '../util';
import type { ForwardProgress } from '../forward';
import type { EmbedOptions } from './embed-prompts';
import type { PromptStateMaterial } from '../prompt-cache';

/** A cache entry's key material: the shared part (PromptStateMaterial) and the kind's own. */
type PromptMaterial = Omit<PromptStateMaterial, 'precision'>;

export interface PerPromptKind<T, X extends object> {
  /** For the debug lines: "prompt-state", "router-input", and what follows hit/miss (" (MLPs of X)"). */
  label: string;
  note?: string;
  /** The kind's part of the key (precision, an expert's MLPs). */
  material: X;
  get(cache: ContentCache, m: PromptMaterial & X): Promise<T | null>;
  put(cache: ContentCache, m: PromptMaterial & X, value: T): Promise<void>;
  /** Tells a forward worker started ahead (startForwardWorker) which pass may come, before the cache is read. */
  prepare?(device: Device): void;
  /** The forward pass over the misses' ids, one result per prompt. */
  compute(ids: number[][], device: Device, onProgress: (p: ForwardProgress) => void): Promise<T[]>;
}

export interface PerPromptResult<T> {
  values: T[];
  ids: number[][];
  computed: number;
  fromCache: number;
  baseId: string;
  padTokenId: number;
  device: Device;
}

/** Cache entries read at once (a prompt's states are 2 × layers × hidden floats: 0.3 MB at 1B, 1 MB at 7B). */
const CACHE_READS = 8;

export async function cachedPerPrompt<T, X extends object>(base: ModelSource, texts: string[], opts: EmbedOptions, kind: PerPromptKind<T, X>): Promise<PerPromptResult<T>> {
  const device = resolveDevice(opts.device);
  kind.prepare?.(device);
  const warn = opts.warn ?? opts.log;
  const cache = new ContentCache(opts.cacheDir, warn, { recompute: opts.recompute });
  // The key's content id from the base's files (memoised), not from models.json, a stage file a cache restored.
  const baseId = await contentId(base.dir, { cache });
  const tok = await loadTokenizer(base.dir);
  const ids = texts.map((t) => tok.encodePrompt(t));
  opts.checkIds?.(ids);
  const material = (i: number): PromptMaterial & X => ({ base: baseId, tokenizer: tok.contentId, text: texts[i]!, ids: ids[i]!, layers: base.config.numLayers, hidden: base.config.hiddenSize, ...kind.material });
  const values: (T | null)[] = [];
  const missing = await withLock(opts.cacheDir, `base-${baseId.slice(0, 32)}`, async () => {
    // A few at a time: each is a small index read and one entry's content, and their waits overlap.
    for (const v of await mapLimit([...texts.keys()], CACHE_READS, (i) => kind.get(cache, material(i)))) values.push(v);
    const missing = texts.map((_, i) => i).filter((i) => values[i] === null);
    for (const [i, t] of texts.entries()) opts.debug?.(`${kind.label} cache ${values[i] !== null ? 'hit' : 'miss'}${kind.note ?? ''}: ${JSON.stringify(t.length > 60 ? `${t.slice(0, 57)}...` : t)}`);
    if (missing.length > 0) {
      const missIds = missing.map((i) => ids[i]!);
      const started = Date.now();
      const tokens = missIds.reduce((a, x) => a + x.length, 0);
      const pass = kind.compute(missIds, device, (p) => {
        const secs = (Date.now() - started) / 1000;
        const done = p.layer * p.prompts + p.promptsDone;
        opts.progress?.update(done, p.layers * p.prompts, `layer ${p.layer + 1}/${p.layers}, ${(done / Math.max(secs, 1e-3)).toFixed(1)} prompt-layers/s`);
      });
      // The float kernels the next stages check and write the states with compile while the pass runs in its
      // worker (~50 ms that a one-prompt edit otherwise waits for after it).
      setImmediate(() => floatKernels());
      const computed = await pass;
      opts.progress?.end();
      (opts.stats ?? opts.log)?.(`forward pass: ${missing.length} prompts, ${tokens} tokens in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      for (const [j, i] of missing.entries()) {
        values[i] = computed[j]!;
        await kind.put(cache, material(i), computed[j]!);
      }
    }
    // Nothing to compute: a worker started ahead would only hold a core.
    if (missing.length === 0) stopForwardWorker();
    return missing;
  }, { log: opts.log, warn });
  return { values: values as T[], ids, computed: missing.length, fromCache: texts.length - missing.length, baseId, padTokenId: tok.padTokenId, device };
}
