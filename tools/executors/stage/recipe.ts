import { namedStage } from './impl';

/** The recipe stage of the pipeline table (libs/pipeline): its folder beside the generator's is taken (tools/executors/recipe). */
export default namedStage('recipe');
