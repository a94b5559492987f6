// `npm run options:schema`: writes tools/executors/stage-options.json from the options table (libs/options), the
// static schema Nx reads. test/unit/options.test.ts fails while the committed file differs.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nxSchemaText } from '../libs/options';

writeFileSync(join(__dirname, 'executors', 'stage-options.json'), nxSchemaText());
