import { ForgeError } from '../errors';

/**
 * A restricted unpickler for what torch.save writes: it rebuilds tensor descriptions (never data) and plain
 * containers. Every global is looked up in a fixed table; anything else is refused, so nothing is ever executed.
 */
export class PickleError extends ForgeError {}

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A storage named by a persistent id: `('storage', storage_type, key, location, numel)`. */
export class StorageRef {
  constructor(readonly key: string, readonly dtype: string, readonly elementSize: number, readonly location: string, readonly numel: number) {}
}

export class TensorRef {
  constructor(readonly storage: StorageRef, readonly storageOffset: number, readonly shape: number[], readonly stride: number[]) {}
}

export type PyValue = null | boolean | number | string | Buffer | PyValue[] | PyTuple | Map<PyValue, PyValue> | PyGlobal | StorageRef | TensorRef;

/** torch storage classes by name, with the safetensors dtype name and element size they hold. */
export const STORAGE_DTYPES: Readonly<Record<string, [string, number]>> = {
  DoubleStorage: ['F64', 8], FloatStorage: ['F32', 4], HalfStorage: ['F16', 2], BFloat16Storage: ['BF16', 2],
  LongStorage: ['I64', 8], IntStorage: ['I32', 4], ShortStorage: ['I16', 2], CharStorage: ['I8', 1],
  ByteStorage: ['U8', 1], BoolStorage: ['BOOL', 1],
  Float8_e4m3fnStorage: ['F8_E4M3', 1], Float8_e5m2Storage: ['F8_E5M2', 1],
  UInt16Storage: ['U16', 2], UInt32Storage: ['U32', 4], UInt64Storage: ['U64', 8],
  UntypedStorage: ['U8', 1],
};

const CALLABLES = new Set([
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_parameter',
  'collections.OrderedDict',
  '_codecs.encode',
]);

function isAllowedGlobal(module: string, name: string): boolean {
  if (CALLABLES.has(`${module}.${name}`)) return true;
  return (module === 'torch' || module === 'torch.storage') && STORAGE_DTYPES[name] !== undefined;
}

const MARK = Symbol('mark');
type StackItem = PyValue | typeof MARK;

export interface UnpickleOptions {
  /** Named in errors. */
  file: string;
}

function toInt(v: PyValue, what: string, file: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new PickleError('pickle_bad', `${what} must be an integer, got ${describePy(v)}`, { file });
  return v;
}

function intList(v: PyValue, what: string, file: string): number[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
  if (!items) throw new PickleError('pickle_bad', `${what} must be a tuple of integers, got ${describePy(v)}`, { file });
  return items.map((x) => toInt(x, what, file));
}

export function describePy(v: PyValue | undefined): string {
  if (v === null || v === undefined) return 'None';
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${v}`;
  if (typeof v === 'string') return 'str';
  if (Buffer.isBuffer(v)) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof Map) return 'dict';
  if (v instanceof PyGlobal) return `global ${v.qualified}`;
  if (v instanceof StorageRef) return 'storage';
  return 'tensor';
}

/** Parses a pickle (protocols 0-5, binary opcodes) into plain values; `persistentLoad` receives each persistent id. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions & { persistentLoad(pid: PyValue): PyValue }): PyValue {
  const { file } = opts;
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const stack: StackItem[] = [];
  const memo = new Map<number, PyValue>();
  let pos = 0;

  const fail = (msg: string): never => {
    throw new PickleError('pickle_bad', `${msg} (data.pkl at byte ${pos})`, { file });
  };
  const need = (n: number) => {
    if (pos + n > buf.length) fail('pickle ends early');
  };
  const u8 = () => { need(1); return buf[pos++]!; };
  const u16 = () => { need(2); const v = buf.readUInt16LE(pos); pos += 2; return v; };
  const u32 = () => { need(4); const v = buf.readUInt32LE(pos); pos += 4; return v; };
  const i32 = () => { need(4); const v = buf.readInt32LE(pos); pos += 4; return v; };
  const u64 = () => {
    need(8);
    const v = buf.readBigUInt64LE(pos); pos += 8;
    if (v > BigInt(buf.length)) fail('length runs past the end of the pickle');
    return Number(v);
  };
  const bytes = (n: number) => { need(n); const b = buf.subarray(pos, pos + n); pos += n; return b; };
  const line = () => {
    const end = buf.indexOf(0x0a, pos);
    if (end < 0) fail('pickle ends early');
    const s = buf.toString('latin1', pos, end);
    pos = end + 1;
    return s;
  };
  const pop = (): PyValue => {
    const v = stack.pop();
    if (v === undefined || v === MARK) return fail('stack underflow');
    return v as PyValue;
  };
  const top = (): PyValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) return fail('stack underflow');
    return v as PyValue;
  };
  const popMark = (): PyValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail('MARK expected');
    const items = stack.splice(i) as PyValue[];
    items.shift();
    return items;
  };
  const global = (module: string, name: string): PyGlobal => {
    if (!isAllowedGlobal(module, name)) {
      throw new PickleError(
        'pickle_unsafe_global',
        `refused pickle global ${module}.${name}: only tensors (torch._utils._rebuild_tensor_v2 with torch *Storage types) and collections.OrderedDict can be loaded; model files are never allowed to run code`,
        { file },
      );
    }
    return new PyGlobal(module, name);
  };
  const setItems = (target: PyValue, kv: PyValue[]) => {
    if (!(target instanceof Map)) fail(`SETITEM on ${describePy(target)}`);
    for (let i = 0; i + 1 < kv.length; i += 2) (target as Map<PyValue, PyValue>).set(kv[i]!, kv[i + 1]!);
  };
  const appendItems = (target: PyValue, items: PyValue[]) => {
    if (!Array.isArray(target)) fail(`APPEND on ${describePy(target)}`);
    (target as PyValue[]).push(...items);
  };

  const call = (fn: PyValue, argsV: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal)) return fail(`REDUCE on ${describePy(fn)}`);
    if (!(argsV instanceof PyTuple)) return fail(`REDUCE arguments must be a tuple, got ${describePy(argsV)}`);
    const args = argsV.items;
    switch (fn.qualified) {
      case 'torch._utils._rebuild_tensor_v2':
      case 'torch._utils._rebuild_tensor': {
        const [storage, offset, size, stride] = args;
        if (!(storage instanceof StorageRef)) return fail(`${fn.qualified} expects a storage first, got ${describePy(storage)}`);
        return new TensorRef(storage, toInt(offset ?? null, 'storage offset', file), intList(size ?? null, 'size', file), intList(stride ?? null, 'stride', file));
      }
      case 'torch._utils._rebuild_parameter': {
        const t = args[0];
        if (!(t instanceof TensorRef)) return fail(`_rebuild_parameter expects a tensor, got ${describePy(t)}`);
        return t;
      }
      case 'collections.OrderedDict': {
        const m = new Map<PyValue, PyValue>();
        const init = args[0];
        if (Array.isArray(init)) {
          for (const pair of init) {
            const kv = pair instanceof PyTuple ? pair.items : Array.isArray(pair) ? pair : null;
            if (!kv || kv.length !== 2) return fail('OrderedDict expects (key, value) pairs');
            m.set(kv[0]!, kv[1]!);
          }
        } else if (init !== undefined) {
          return fail(`OrderedDict expects no arguments or a list of pairs, got ${describePy(init)}`);
        }
        return m;
      }
      case '_codecs.encode': {
        // How protocol 2 pickles `bytes`: _codecs.encode(str, 'latin1').
        const [s, enc] = args;
        if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1')) return fail('_codecs.encode is only accepted as (str, "latin1")');
        return Buffer.from(s, 'latin1');
      }
      default:
        return fail(`${fn.qualified} cannot be called`);
    }
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: u64(); break; // FRAME: framing is only a hint
      case 0x2e: { // STOP
        const v = pop();
        return v;
      }
      case 0x28: stack.push(MARK); break; // MARK
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: stack.push(top()); break; // DUP
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: stack.push(i32()); break; // BININT
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x8a: case 0x8b: { // LONG1, LONG4
        const n = op === 0x8a ? u8() : u32();
        const b = bytes(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
        if (n > 0 && b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) fail(`integer ${v} is too large`);
        stack.push(Number(v));
        break;
      }
      case 0x49: { // INT (text)
        const s = line();
        stack.push(s === '01' ? true : s === '00' ? false : Number.parseInt(s, 10));
        break;
      }
      case 0x47: { need(8); stack.push(buf.readDoubleBE(pos)); pos += 8; break; } // BINFLOAT
      case 0x58: stack.push(bytes(u32()).toString('utf8')); break; // BINUNICODE
      case 0x8c: stack.push(bytes(u8()).toString('utf8')); break; // SHORT_BINUNICODE
      case 0x8d: stack.push(bytes(u64()).toString('utf8')); break; // BINUNICODE8
      case 0x54: stack.push(bytes(u32()).toString('latin1')); break; // BINSTRING
      case 0x55: stack.push(bytes(u8()).toString('latin1')); break; // SHORT_BINSTRING
      case 0x42: stack.push(Buffer.from(bytes(u32()))); break; // BINBYTES
      case 0x43: stack.push(Buffer.from(bytes(u8()))); break; // SHORT_BINBYTES
      case 0x8e: stack.push(Buffer.from(bytes(u64()))); break; // BINBYTES8
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x74: stack.push(new PyTuple(popMark())); break; // TUPLE
      case 0x85: stack.push(new PyTuple([pop()])); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); stack.push(new PyTuple([a, b])); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push(new PyTuple([a, b, c])); break; } // TUPLE3
      case 0x6c: stack.push(popMark()); break; // LIST
      case 0x64: { const m = new Map<PyValue, PyValue>(); setItems(m, popMark()); stack.push(m); break; } // DICT
      case 0x61: { const v = pop(); appendItems(top(), [v]); break; } // APPEND
      case 0x65: { const items = popMark(); appendItems(top(), items); break; } // APPENDS
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const kv = popMark(); setItems(top(), kv); break; } // SETITEMS
      case 0x71: memo.set(u8(), top()); break; // BINPUT
      case 0x72: memo.set(u32(), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x70: memo.set(Number.parseInt(line(), 10), top()); break; // PUT
      case 0x68: case 0x6a: case 0x67: { // BINGET, LONG_BINGET, GET
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number.parseInt(line(), 10);
        if (!memo.has(k)) fail(`memo key ${k} is not defined`);
        stack.push(memo.get(k)!);
        break;
      }
      case 0x63: { const module = line(); const name = line(); stack.push(global(module, name)); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL expects two strings');
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { const args = pop(); const fn = pop(); stack.push(call(fn, args)); break; } // REDUCE
      case 0x51: stack.push(opts.persistentLoad(pop())); break; // BINPERSID
      case 0x62: { // BUILD: only an OrderedDict's instance state (e.g. state_dict()._metadata), which is dropped
        const state = pop();
        const target = top();
        if (!(target instanceof Map)) fail(`BUILD on ${describePy(target)} is not allowed`);
        void state;
        break;
      }
      case 0x81: case 0x92: case 0x69: case 0x6f: { // NEWOBJ, NEWOBJ_EX, INST, OBJ
        fail('creating objects (NEWOBJ/INST/OBJ) is not allowed');
        break;
      }
      default:
        fail(`unsupported pickle opcode 0x${op.toString(16)}`);
    }
  }
}
