import { namedStage } from '../stage/impl';

/** The fetch stage of the pipeline table (libs/pipeline). */
export default namedStage('fetch');
