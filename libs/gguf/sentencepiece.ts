// The pieces of a SentencePiece tokenizer.model (a protobuf ModelProto), read without a protobuf library: field 1
// holds the pieces, each with its text (1), score (2, float) and type (3, NORMAL=1 UNKNOWN=2 CONTROL=3
// USER_DEFINED=4 UNUSED=5 BYTE=6). Everything else in the file is skipped.
import { readFile, stat } from 'node:fs/promises';
import { ModelError } from '../errors';

export interface SentencePiece {
  piece: string;
  score: number;
  type: number;
}

const MAX_MODEL_BYTES = 64 * 1024 * 1024;

class Reader {
  pos = 0;
  constructor(readonly buf: Buffer, readonly file: string, readonly end = buf.length) {}
  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return result;
      shift += 7;
      if (shift > 63) this.fail('varint too long');
    }
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) {
      const len = this.varint(); // read before adding: `pos += varint()` would add to the old pos
      this.pos += len;
    }
    else if (wire === 5) this.pos += 4;
    else this.fail(`unsupported wire type ${wire}`);
    if (this.pos > this.end) this.fail('field runs past its message');
  }
  fail(why: string): never {
    throw new ModelError('bad_tokenizer', `not a SentencePiece model (${why} at byte ${this.pos})`, { file: this.file });
  }
}

function readPiece(r: Reader, end: number): SentencePiece {
  const p: SentencePiece = { piece: '', score: 0, type: 1 };
  while (r.pos < end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === 2) {
      const len = r.varint();
      if (r.pos + len > end) r.fail('piece text runs past its message');
      p.piece = r.buf.toString('utf8', r.pos, r.pos + len);
      r.pos += len;
    } else if (field === 2 && wire === 5) {
      if (r.pos + 4 > end) r.fail('score runs past its message');
      p.score = r.buf.readFloatLE(r.pos);
      r.pos += 4;
    } else if (field === 3 && wire === 0) p.type = r.varint();
    else r.skip(wire);
  }
  if (r.pos !== end) r.fail('piece message length mismatch');
  return p;
}

export async function readSentencePieceModel(file: string): Promise<SentencePiece[]> {
  const st = await stat(file);
  if (!st.isFile()) throw new ModelError('bad_tokenizer', 'not a regular file', { file });
  if (st.size > MAX_MODEL_BYTES) throw new ModelError('bad_tokenizer', `larger than ${MAX_MODEL_BYTES} bytes, not a tokenizer model`, { file });
  const buf = await readFile(file);
  const r = new Reader(buf, file);
  const pieces: SentencePiece[] = [];
  while (r.pos < buf.length) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 1 && wire === 2) {
      const len = r.varint();
      const end = r.pos + len;
      if (end > buf.length) r.fail('piece runs past the end of the file');
      pieces.push(readPiece(r, end));
    } else r.skip(wire);
  }
  if (pieces.length === 0) r.fail('no pieces');
  return pieces;
}
