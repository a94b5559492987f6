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
import { promptIds } from '../tokenizer';
import { floatKernels } from '../safetensors';
import { mapLimit } from '../util';
import type { ForwardProgress } from '../forward';
import type { EmbedOptions } from './embed-prompts';
import { heldPuts, promptIdsMemo, type PromptStateMaterial } from '../prompt-cache';

/** A cache entry's key material: the shared part (PromptStateMaterial) and the kind's own. */
type PromptMaterial = Omit<PromptStateMaterial, 'precision'>;

export interface PerPromptKind<T, X extends object> {
  /** For the debug lines: "prompt-state", "router-input", and what follows hit/miss (" (MLPs of X)"). */
  label: string;
  note?: string;
  /** The kind's part of the key (precision, an expert's MLPs). */
  material: X;
  get(cache: ContentCache, m: PromptMaterial & X): Promise<T | null>;
  /** Whether the cache's index names an entry (its content neither read nor checked: that is `get`'s). */
  listed(cache: ContentCache, m: PromptMaterial & X): Promise<boolean>;
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
  // Ids from the cache's memo where it holds them all: the tokenizer is not built (0.3-1.2 s for real ones). What
  // the memo lacked is written once the pass is under way, not before it starts.
  const writes = heldPuts(promptIdsMemo(cache));
  const tok = await promptIds(base.dir, texts, writes.memo);
  const ids = tok.ids;
  opts.checkIds?.(ids);
  const material = (i: number): PromptMaterial & X => ({ base: baseId, tokenizer: tok.contentId, text: texts[i]!, ids: ids[i]!, layers: base.config.numLayers, hidden: base.config.hiddenSize, ...kind.material });
  const values: (T | null)[] = texts.map(() => null);
  const missing = await withLock(opts.cacheDir, `base-${baseId.slice(0, 32)}`, async () => {
    // The index first (a small read per key): the prompts it does not name go to the forward pass at once, and
    // the entries it names are read and checked while the pass runs, not before it.
    const listed = await mapLimit([...texts.keys()], CACHE_READS, (i) => kind.listed(cache, material(i)));
    const unlisted = texts.map((_, i) => i).filter((i) => !listed[i]);
    const first = unlisted.length > 0 ? computeMisses(unlisted) : null;
    first?.catch(() => undefined); // awaited below, after the reads
    writes.flush();
    // Nothing to compute (yet): a worker started ahead would only hold a core while the entries are read.
    if (!first) stopForwardWorker();
    // A few at a time: each is a small index read and one entry's content, and their waits overlap.
    const read = await mapLimit([...texts.keys()], CACHE_READS, (i) => (listed[i] ? kind.get(cache, material(i)) : Promise.resolve(null)));
    // An entry the index named that did not read back whole and bound to its key is a miss after all.
    const late = texts.map((_, i) => i).filter((i) => listed[i] && read[i] === null);
    for (const [i, v] of read.entries()) if (listed[i]) values[i] = v;
    const missing = texts.map((_, i) => i).filter((i) => !listed[i] || read[i] === null);
    for (const [i, t] of texts.entries()) opts.debug?.(`${kind.label} cache ${missing.includes(i) ? 'miss' : 'hit'}${kind.note ?? ''}: ${JSON.stringify(t.length > 60 ? `${t.slice(0, 57)}...` : t)}`);
    if (first) await first;
    if (late.length > 0) await computeMisses(late);
    return missing;
  }, { log: opts.log, warn });
  return { values: values as T[], ids, computed: missing.length, fromCache: texts.length - missing.length, baseId, padTokenId: tok.padTokenId, device };

  /** The forward pass over prompts `which` (one pass), each result stored. */
  async function computeMisses(which: number[]): Promise<void> {
    const missIds = which.map((i) => ids[i]!);
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
    (opts.stats ?? opts.log)?.(`forward pass: ${which.length} prompts, ${tokens} tokens in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    for (const [j, i] of which.entries()) {
      values[i] = computed[j]!;
      await kind.put(cache, material(i), computed[j]!);
    }
  }
}
