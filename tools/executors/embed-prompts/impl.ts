import { namedStage } from '../stage/impl';

/** The embed-prompts stage of the pipeline table (libs/pipeline). */
export default namedStage('embed-prompts');
