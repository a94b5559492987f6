import { z } from 'zod';

import { DEFAULT_GATE_MODE, GATE_MODE_NAMES } from '../gates';
import { OUTPUT_DTYPE_NAMES } from '../safetensors';

export type { GateMode } from '../gates';

/**
 * dtype names the reference accepts (dtype_from_name), with or without a `torch.` prefix. int64 passes here as
 * there, and is refused with its line when the merge is loaded (no output dtype).
 */
export const DTYPE_NAMES = [...OUTPUT_DTYPE_NAMES, 'int64'];

const modelPath = z.string().min(1, 'must be a non-empty model path or Hub id');

/** `path`, `org/name`, `org/name@rev`, or the mapping form `{model: {path, revision}, lora, override_architecture}`. */
export const ModelReferenceSchema = z.union([
  modelPath,
  z.strictObject({
    model: z.strictObject({ path: modelPath, revision: z.string().nullish() }),
    lora: z.unknown().nullish(),
    override_architecture: z.string().nullish(),
  }),
]);
export type ModelReferenceInput = z.infer<typeof ModelReferenceSchema>;

const promptList = z.array(z.string()).nullish();

export const ExpertSchema = z.strictObject({
  source_model: ModelReferenceSchema,
  positive_prompts: promptList,
  negative_prompts: promptList,
  noise_scale: z.number().nullish(),
  residual_scale: z.number().nullish(),
});
export type Expert = z.infer<typeof ExpertSchema>;

export const RecipeSchema = z.strictObject({
  base_model: ModelReferenceSchema,
  experts: z.array(ExpertSchema),
  gate_mode: z.enum(GATE_MODE_NAMES).default(DEFAULT_GATE_MODE),
  dtype: z
    .string()
    .refine((s) => DTYPE_NAMES.includes(s.replace(/^torch\./, '')), {
      message: `expected one of ${DTYPE_NAMES.join(', ')} (optionally prefixed with "torch.")`,
    })
    .nullish(),
  experts_per_token: z.number().int('must be an integer').default(2),
  shared_experts: z.array(ExpertSchema).nullish(),
  architecture: z.string().nullish(),
  // gate_mode fit only (our extension, libs/gates/fit.ts): ridge strength, whose MLPs the prompts' states come
  // through (each positive expert's, or the base's), and the calibrated top-1 confidence.
  fit_lambda: z.number().positive('must be a number > 0').finite('must be a finite number > 0').nullish(),
  fit_states: z.enum(['expert', 'base']).nullish(),
  fit_confidence: z.number().gt(0, 'must be a number in (0, 1)').lt(1, 'must be a number in (0, 1)').nullish(),
});
export type Recipe = z.infer<typeof RecipeSchema>;

export const TOP_LEVEL_KEYS = Object.keys(RecipeSchema.shape);
export const EXPERT_KEYS = Object.keys(ExpertSchema.shape);
