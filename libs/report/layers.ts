// How the report names layers; below routing.ts and advice.ts, which both use it (and one imports the other).

/** Consecutive layers as `3`, `0–5`, `0–1, 4`. */
export function layerRanges(layers: number[]): string {
  const out: string[] = [];
  let i = 0;
  while (i < layers.length) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j]! + 1) j++;
    out.push(i === j ? `${layers[i]}` : `${layers[i]}–${layers[j]}`);
    i = j + 1;
  }
  return out.join(', ');
}

/** `every layer` (all of a model's `total`, more than one), else `layer 3` / `layers 0–5`. */
export const whereLayers = (layers: number[], total: number): string => (layers.length === total && total > 1 ? 'every layer' : `layer${layers.length === 1 ? '' : 's'} ${layerRanges(layers)}`);
