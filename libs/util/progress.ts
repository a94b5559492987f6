/** Progress of long work: a bar redrawn in place on a terminal, else a plain line every few seconds. */
export interface Progress {
  update(done: number, total: number, detail: string): void;
  end(): void;
}

export function progressReporter(label: string, stream: NodeJS.WriteStream = process.stderr, intervalMs = 5000): Progress {
  const tty = stream.isTTY === true && !process.env.CI;
  const started = Date.now();
  // Off a terminal, short work prints nothing: the first line comes after one interval, the last closes it.
  let last = started;
  let drawn = false;
  return {
    update(done, total, detail) {
      const now = Date.now();
      if (tty) {
        const width = 24;
        const filled = total > 0 ? Math.round((done / total) * width) : 0;
        stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${detail}`);
        drawn = true;
      } else if (now - last >= intervalMs || (done === total && drawn)) {
        stream.write(`${label}: ${detail} (${((now - started) / 1000).toFixed(1)} s)\n`);
        last = now;
        drawn = done !== total;
      }
    },
    end() {
      if (tty && drawn) stream.write('\n');
      drawn = false;
    },
  };
}

/** `done/total unit` in the unit that fits `total` (B, kB, MB or GB), so a small model's bar never reads 0.00/0.00 GB. */
export function byteFraction(done: number, total: number): string {
  const [div, unit, digits] = total >= 1e9 ? [1e9, 'GB', 2] : total >= 1e6 ? [1e6, 'MB', 1] : total >= 1e3 ? [1e3, 'kB', 1] : [1, 'B', 0];
  return `${(done / div).toFixed(digits)}/${(total / div).toFixed(digits)} ${unit}`;
}
