/**
 * The gate modes, one row each: every consumer (recipe schema, stages, architectures, report, model
 * card, the Nx generator and its schema.json) reads these fields instead of naming modes. A new mode is a row
 * here, its implementation (the states it needs, or its draw), and a test; test/unit/gate-modes.test.ts
 * fails when a consumer's list drifts from this table.
 */

import { orList } from '../util';

/**
 * What embed-prompts stores for a mode: per-layer hidden states, token-embedding sums, every token's router input
 * (the post-attention RMSNorm output of each layer), or nothing.
 */
export const PROMPT_STATE_KINDS = ['cheap_embed', 'hidden', 'router_input', 'none'] as const;
export type PromptStateKind = (typeof PROMPT_STATE_KINDS)[number];

/** How a prompt's hidden states become one vector per layer: its last token, or the padded mean. */
export type HiddenReduction = 'last' | 'avg';

/** The reference's one router draw from PyTorch's generator. */
export type RandomDraw = 'randn' | 'rand';

interface ModeFacts {
  /** is_bad_config's prompt checks apply (only `random` skips them; `uniform_random` does not). */
  needsPrompts: boolean;
  /** The state the routing report sends prompts through, in its words. */
  routedState: string;
  /** A note after the name in help texts (the generator's recipe comment, its schema's description), or ''. */
  help: string;
  /** Offered in `nx g moe-forge:recipe`'s interactive list, with this label; absent: typed only. */
  promptLabel?: string;
  /** The report's advice when its routers barely route by the recipe: another mode that uses more of what the router sees. */
  tryInstead?: string;
}

/**
 * `states`: the prompt states the gates are built from. `reduction` (hidden states only): the token reduction
 * they are read with. `random`: the draw; such gates come from the seed, so build-gates defers them to
 * assemble-experts (where the seed is known), and every gated shared expert gets a row.
 */
export type GateModeSpec = ModeFacts &
  (
    | { states: 'hidden'; reduction: HiddenReduction; random: null }
    | { states: 'cheap_embed'; reduction: null; random: null }
    | { states: 'router_input'; reduction: null; random: null }
    | { states: 'none'; reduction: null; random: RandomDraw }
  );

const LAST_TOKEN = 'last token’s hidden state entering each layer';

export const GATE_MODES = {
  hidden: { states: 'hidden', reduction: 'last', random: null, needsPrompts: true, routedState: LAST_TOKEN, help: 'last-token hidden states, the default', promptLabel: "last-token hidden states of each expert's prompts", tryInstead: 'gate_mode hidden_avg builds each row from every token of the prompts (the router meets every token), not the last one' },
  hidden_avg: { states: 'hidden', reduction: 'avg', random: null, needsPrompts: true, routedState: "mean over the prompt's tokens of the hidden state entering each layer (hidden_avg)", help: '' },
  // The reference's hidden and hidden_last are the same mode.
  hidden_last: { states: 'hidden', reduction: 'last', random: null, needsPrompts: true, routedState: LAST_TOKEN, help: '' },
  cheap_embed: { states: 'cheap_embed', reduction: null, random: null, needsPrompts: true, routedState: 'sum of the token embeddings (cheap_embed)', help: 'token embeddings', promptLabel: 'token embeddings of the prompts (fast)', tryInstead: "gate_mode hidden builds each row from the base model's states of the prompts in context, not from their token embeddings alone" },
  // Random gates route nothing of their own: the report shows what the last token's state meets.
  random: { states: 'none', reduction: null, random: 'randn', needsPrompts: false, routedState: `${LAST_TOKEN} (the gates are random)`, help: '', promptLabel: 'no prompts' },
  uniform_random: { states: 'none', reduction: null, random: 'rand', needsPrompts: true, routedState: `${LAST_TOKEN} (the gates are random)`, help: '' },
  // Ours, not the reference's: each layer's router fitted to every token of the prompts (libs/gates/fit.ts).
  fit: { states: 'router_input', reduction: null, random: null, needsPrompts: true, routedState: "last token's router input (the post-attention RMSNorm output of each layer), the input the fit was made on", help: 'routers fitted to every token of the prompts, our extension', promptLabel: 'routers fitted to every prompt token (our extension)' },
} as const satisfies Record<string, GateModeSpec>;

export type GateMode = keyof typeof GATE_MODES;

/** The names in table order (the order of error messages and help lists). */
export const GATE_MODE_NAMES = Object.keys(GATE_MODES) as [GateMode, ...GateMode[]];

export const DEFAULT_GATE_MODE: GateMode = 'hidden';

export function gateModeSpec(mode: GateMode): GateModeSpec {
  return GATE_MODES[mode];
}

/** The modes that need no prompts, as prose ("random"). */
export function promptFreeModes(): string {
  return orList(GATE_MODE_NAMES.filter((m) => !GATE_MODES[m].needsPrompts));
}

/**
 * Every mode with its note, for help texts: "hidden (last-token hidden states, the default), hidden_avg, …,
 * random or uniform_random (no prompts needed for random)".
 */
export function gateModesHelp(): string {
  const named = GATE_MODE_NAMES.map((m) => (GATE_MODES[m].help ? `${m} (${GATE_MODES[m].help})` : m));
  return `${orList(named)} (no prompts needed for ${promptFreeModes()})`;
}
