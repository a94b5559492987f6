/** Eigenvalues of a small symmetric matrix (cyclic Jacobi), ascending. */
export function symmetricEigenvalues(a: number[][]): number[] {
  const n = a.length;
  const m = a.map((r) => r.slice());
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) off += m[i]![j]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = m[p]![q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (m[q]![q]! - m[p]![p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const mkp = m[k]![p]!;
          const mkq = m[k]![q]!;
          m[k]![p] = c * mkp - s * mkq;
          m[k]![q] = s * mkp + c * mkq;
        }
        for (let k = 0; k < n; k++) {
          const mpk = m[p]![k]!;
          const mqk = m[q]![k]!;
          m[p]![k] = c * mpk - s * mqk;
          m[q]![k] = s * mpk + c * mqk;
        }
      }
    }
  }
  return m.map((r, i) => r[i]!).sort((x, y) => x - y);
}

/** Gram matrix R·Rᵀ of an N×H matrix given as rows. */
function gramOf(rows: ArrayLike<number>[]): number[][] {
  const n = rows.length;
  const gram: number[][] = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let s = 0;
      const a = rows[i]!;
      const b = rows[j]!;
      for (let k = 0; k < a.length; k++) s += a[k]! * b[k]!;
      gram[i]![j] = s;
      gram[j]![i] = s;
    }
  }
  return gram;
}

/** 2-norm condition number σmax/σmin of an N×H matrix given as rows (N <= H), via the Gram matrix. */
export function conditionNumber(rows: ArrayLike<number>[]): number {
  return conditionFromGram(gramOf(rows));
}

/** conditionNumber from the rows' Gram matrix. */
export function conditionFromGram(gram: number[][]): number {
  const ev = symmetricEigenvalues(gram);
  const lo = ev[0]!;
  const hi = ev[ev.length - 1]!;
  if (!(hi > 0)) return Infinity;
  if (lo <= hi * 1e-14) return Infinity;
  return Math.sqrt(hi / lo);
}

/** Singular values of an N×H matrix given as rows (N <= H), descending, via the Gram matrix's eigenvalues. */
export function singularValues(rows: ArrayLike<number>[]): number[] {
  return symmetricEigenvalues(gramOf(rows)).map((x) => Math.sqrt(Math.max(x, 0))).reverse();
}
