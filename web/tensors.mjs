// Tensor plumbing shared by castml's node scripts: .npy files and JSON specs to onnxruntime-web
// tensors, and tensors back to JSON.
//
// Why a hand-written .npy reader: the format is a short header plus raw little-endian C-order
// data, so twenty lines beat a dependency; Python writes the inputs with np.save and reads the
// JSON printed here, so both sides agree on names, dtypes and shapes without a third format.
// JSON cannot hold NaN/Infinity or exact int64, so those travel as strings ("NaN", "-Infinity",
// "9007199254740993") and the Python side parses them back with numpy.

import { readFileSync } from 'node:fs';

// numpy dtype name <-> (onnxruntime-web type, typed array, .npy descr)
export const DTYPES = {
  float32: { ort: 'float32', array: Float32Array, descr: '<f4' },
  float64: { ort: 'float64', array: Float64Array, descr: '<f8' },
  int8: { ort: 'int8', array: Int8Array, descr: '|i1' },
  uint8: { ort: 'uint8', array: Uint8Array, descr: '|u1' },
  int16: { ort: 'int16', array: Int16Array, descr: '<i2' },
  uint16: { ort: 'uint16', array: Uint16Array, descr: '<u2' },
  int32: { ort: 'int32', array: Int32Array, descr: '<i4' },
  uint32: { ort: 'uint32', array: Uint32Array, descr: '<u4' },
  int64: { ort: 'int64', array: BigInt64Array, descr: '<i8' },
  uint64: { ort: 'uint64', array: BigUint64Array, descr: '<u8' },
  bool: { ort: 'bool', array: Uint8Array, descr: '|b1' },
  float16: { ort: 'float16', array: Uint16Array, descr: '<f2' },
};
const BY_DESCR = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.descr, k]));
const BY_ORT = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v.ort, k]));

/** Parse a .npy file (version 1-3, little-endian, C order) into {dtype, shape, data}. */
export function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.readUInt32BE(0) !== 0x934e554d || buf.toString('latin1', 4, 6) !== 'PY') {
    throw new Error(`${path}: not a .npy file (bad magic)`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  const dtype = BY_DESCR[descr === '<b1' ? '|b1' : descr];
  if (!dtype || fortran || shapeText === undefined) {
    throw new Error(`${path}: unsupported .npy header ${header.trim()}; expected a little-endian C-order array`);
  }
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const Arr = DTYPES[dtype].array;
  const raw = buf.subarray(start);
  const copy = new Uint8Array(raw.length);
  copy.set(raw);
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype, shape, data: new Arr(copy.buffer, 0, n) };
}

function parseScalar(v, dtype) {
  if (typeof v === 'string') {
    return dtype === 'int64' || dtype === 'uint64' ? BigInt(v) : Number(v);
  }
  if (dtype === 'int64' || dtype === 'uint64') return BigInt(v);
  if (dtype === 'bool') return v ? 1 : 0;
  return v;
}

/** A JSON spec {dtype, shape, data: flat list} as {dtype, shape, data: typed array}. */
export function fromJson(spec, where) {
  const info = DTYPES[spec.dtype];
  if (!info) throw new Error(`${where}: unknown dtype ${JSON.stringify(spec.dtype)}; expected one of ${Object.keys(DTYPES)}`);
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const flat = spec.data.flat(Infinity);
  if (flat.length !== n) throw new Error(`${where}: shape [${spec.shape}] needs ${n} values, got ${flat.length}`);
  return { dtype: spec.dtype, shape: spec.shape, data: info.array.from(flat, (v) => parseScalar(v, spec.dtype)) };
}

/** An onnxruntime-web Tensor from {dtype, shape, data}. */
export function toOrt(ort, t) {
  const data = t.dtype === 'bool' ? new Uint8Array(t.data) : t.data;
  return new ort.Tensor(DTYPES[t.dtype].ort, data, t.shape);
}

function jsonScalar(v) {
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'boolean') return v;
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return 'Infinity';
  if (v === -Infinity) return '-Infinity';
  return v;
}

// float16 arrives as raw bits (Uint16Array) where the runtime has no Float16Array
function fromHalf(h) {
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** An onnxruntime-web Tensor as JSON-ready {dtype, shape, data: flat list}. */
export function tensorToJson(tensor) {
  const dtype = BY_ORT[tensor.type] ?? tensor.type;
  const half = dtype === 'float16' && tensor.data instanceof Uint16Array;
  const data = Array.from(tensor.data, (v) => (dtype === 'bool' ? Boolean(v) : jsonScalar(half ? fromHalf(v) : v)));
  return { dtype, shape: Array.from(tensor.dims), data };
}
