import { namedStage } from '../stage/impl';

/** The report stage of the pipeline table (libs/pipeline). */
export default namedStage('report');
