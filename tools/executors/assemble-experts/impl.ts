import { namedStage } from '../stage/impl';

/** The assemble-experts stage of the pipeline table (libs/pipeline). */
export default namedStage('assemble-experts');
