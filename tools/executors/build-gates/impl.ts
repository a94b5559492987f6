import { namedStage } from '../stage/impl';

/** The build-gates stage of the pipeline table (libs/pipeline). */
export default namedStage('build-gates');
