import { namedStage } from '../stage/impl';

/** The write stage of the pipeline table (libs/pipeline). */
export default namedStage('write');
