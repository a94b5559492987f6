import { describeError } from '../../../libs/errors';
import { logger } from '../log';
import { checkStageOptions } from '../options';

/**
 * Nx has checked the options against stage-options.json; what a JSON schema cannot say (a seed beyond 2^53) is
 * checked here, with the CLI's messages, before any stage runs.
 */
export default async function checkOptions(options: unknown): Promise<{ success: boolean }> {
  try {
    checkStageOptions(options);
    return { success: true };
  } catch (e) {
    logger.error(`error: ${describeError(e)}`);
    return { success: false };
  }
}
