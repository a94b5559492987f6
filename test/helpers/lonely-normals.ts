// Run as a process of its own by test/unit/normals-ahead.test.ts: nothing but waits for normals from the generator
// thread keeps this process alive, and it must still read them all and print "done".
import { normalsAhead, setNormalsAheadMin } from '../../libs/noise/normals-ahead';

setNormalsAheadMin(1);
async function main(): Promise<void> {
  const r = normalsAhead(5, 'lonely', 6 << 20)!;
  const out = new Float32Array(1 << 20);
  for (let i = 0; i < 6; i++) {
    await r.ready(out.length);
    r.read(out);
  }
  r.close();
  process.stdout.write('done\n');
}
void main();
