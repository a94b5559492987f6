/**
 * A minimal ONNX protobuf encoder: only the messages and fields a decoder-layer graph needs.
 * Field numbers follow onnx/onnx.proto. Messages are built as lists of byte chunks so that large
 * embedded weights are copied once, when the final buffer is assembled.
 */

/** ONNX TensorProto.DataType values used here. */
export const OnnxDtype = { FLOAT: 1, UINT8: 2, INT64: 7, FLOAT16: 10, DOUBLE: 11, BFLOAT16: 16 } as const;

/** A message under construction: its chunks and their total length. */
class Msg {
  readonly parts: Uint8Array[] = [];
  length = 0;

  private push(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.byteLength;
  }

  private tag(field: number, wire: number): void {
    this.push(varint(BigInt((field << 3) | wire)));
  }

  int(field: number, v: number | bigint): this {
    this.tag(field, 0);
    this.push(varint(BigInt.asUintN(64, BigInt(v))));
    return this;
  }

  float(field: number, v: number): this {
    this.tag(field, 5);
    const b = Buffer.alloc(4);
    b.writeFloatLE(v, 0);
    this.push(b);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.tag(field, 2);
    this.push(varint(BigInt(b.byteLength)));
    this.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, Buffer.from(s, 'utf8'));
  }

  msg(field: number, m: Msg): this {
    this.tag(field, 2);
    this.push(varint(BigInt(m.length)));
    for (const p of m.parts) this.push(p);
    return this;
  }
}

function varint(v: bigint): Uint8Array {
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return Uint8Array.from(out);
}

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | { ints: number[] };

export interface OnnxNode {
  op: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  attrs?: Record<string, AttrValue>;
  /** An operator set other than the default one (e.g. com.microsoft); the model must import it. */
  domain?: string;
}

/** Weight data either embedded (raw little-endian bytes) or external (a file beside the .onnx). */
export type TensorData =
  | { raw: Uint8Array }
  | { external: { location: string; offset: number; length: number } }
  | { int64: number[] }
  | { float: number[] };

export interface OnnxTensor {
  name: string;
  dtype: number;
  dims: number[];
  data: TensorData;
}

export interface OnnxValueInfo {
  name: string;
  dtype: number;
  /** A number is a fixed size, a string a symbolic (dynamic) dimension. */
  shape: (number | string)[];
}

export interface OnnxGraph {
  name: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
}

export interface OnnxModel {
  graph: OnnxGraph;
  opset: number;
  /** Other operator sets the graph uses, with their versions. */
  domains?: Record<string, number>;
  irVersion?: number;
  producer?: string;
}

// AttributeProto.AttributeType
const ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_STRING = 3, ATTR_FLOATS = 6, ATTR_INTS = 7;

function attribute(name: string, v: AttrValue): Msg {
  const m = new Msg().string(1, name);
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`attribute ${name}: use { float } for non-integers`);
    return m.int(3, v).int(20, ATTR_INT);
  }
  if (typeof v === 'string') return m.string(4, v).int(20, ATTR_STRING);
  if (Array.isArray(v) || 'ints' in v) {
    for (const i of Array.isArray(v) ? v : v.ints) m.int(8, i);
    return m.int(20, ATTR_INTS);
  }
  if ('floats' in v) {
    for (const f of v.floats) m.float(7, f);
    return m.int(20, ATTR_FLOATS);
  }
  return m.float(2, v.float).int(20, ATTR_FLOAT);
}

function node(n: OnnxNode): Msg {
  const m = new Msg();
  for (const i of n.inputs) m.string(1, i);
  for (const o of n.outputs) m.string(2, o);
  if (n.name) m.string(3, n.name);
  m.string(4, n.op);
  for (const [k, v] of Object.entries(n.attrs ?? {})) m.msg(5, attribute(k, v));
  if (n.domain) m.string(7, n.domain);
  return m;
}

function tensor(t: OnnxTensor): Msg {
  const m = new Msg();
  for (const d of t.dims) m.int(1, d);
  m.int(2, t.dtype);
  if ('int64' in t.data) for (const v of t.data.int64) m.int(7, v);
  if ('float' in t.data) for (const v of t.data.float) m.float(4, v);
  m.string(8, t.name);
  if ('raw' in t.data) m.bytes(9, t.data.raw);
  if ('external' in t.data) {
    const e = t.data.external;
    for (const [k, v] of [['location', e.location], ['offset', String(e.offset)], ['length', String(e.length)]] as const) {
      m.msg(13, new Msg().string(1, k).string(2, v));
    }
    m.int(14, 1); // DataLocation.EXTERNAL
  }
  return m;
}

function valueInfo(v: OnnxValueInfo): Msg {
  const shape = new Msg();
  for (const d of v.shape) shape.msg(1, typeof d === 'number' ? new Msg().int(1, d) : new Msg().string(2, d));
  const tensorType = new Msg().int(1, v.dtype).msg(2, shape);
  return new Msg().string(1, v.name).msg(2, new Msg().msg(1, tensorType));
}

function graph(g: OnnxGraph): Msg {
  const m = new Msg();
  for (const n of g.nodes) m.msg(1, node(n));
  m.string(2, g.name);
  for (const t of g.initializers) m.msg(5, tensor(t));
  for (const i of g.inputs) m.msg(11, valueInfo(i));
  for (const o of g.outputs) m.msg(12, valueInfo(o));
  return m;
}

/** Serialises a ModelProto. Protobuf caps a message at 2 GiB, so larger embedded models are refused. */
export function encodeModel(model: OnnxModel): Uint8Array {
  const m = new Msg()
    .int(1, model.irVersion ?? 8)
    .string(2, model.producer ?? 'moe-forge')
    .msg(7, graph(model.graph))
    .msg(8, new Msg().string(1, '').int(2, model.opset));
  for (const [domain, version] of Object.entries(model.domains ?? {})) m.msg(8, new Msg().string(1, domain).int(2, version));
  if (m.length >= 2 ** 31) throw new RangeError(`ONNX model of ${m.length} bytes exceeds protobuf's 2 GiB limit`);
  const out = new Uint8Array(m.length);
  let pos = 0;
  for (const p of m.parts) {
    out.set(p, pos);
    pos += p.byteLength;
  }
  return out;
}
