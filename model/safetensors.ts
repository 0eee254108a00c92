// safetensors I/O (FACTS.md): a reader that streams one tensor at a time from disk (Deno.open, seek,
// read), for single files and sharded checkpoints (model.safetensors.index.json), with a validated
// header; and an atomic writer (temporary file, then rename) with __metadata__.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data; offsets
// are relative to the end of the header and tile the data exactly.

export type SafetensorsDType = "BF16" | "F16" | "F32" | "U8" | "I8" | "I32" | "I64";
export const SAFETENSORS_DTYPE_BYTES: Record<SafetensorsDType, number> = {
  BF16: 2,
  F16: 2,
  F32: 4,
  U8: 1,
  I8: 1,
  I32: 4,
  I64: 8,
};

/** Largest header accepted (the format's own readers cap it at 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte offsets relative to the start of the data section. */
  begin: number;
  end: number;
  /** The file holding it. */
  file: string;
}

/** Parses and validates a header's JSON against the size of the data section. */
export function parseHeader(
  file: string,
  json: string,
  dataBytes: number,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw new SafetensorsError(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SafetensorsError(`${file}: header is not a JSON object`);
  }
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new SafetensorsError(`${file}: __metadata__ must be an object of strings`);
      }
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== "string") {
          throw new SafetensorsError(
            `${file}: __metadata__.${k} is ${JSON.stringify(s)}; values must be strings`,
          );
        }
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const where = `${file}: tensor "${name}"`;
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== "object" || e === null) throw new SafetensorsError(`${where}: entry is not an object`);
    if (typeof e.dtype !== "string" || !(e.dtype in SAFETENSORS_DTYPE_BYTES)) {
      throw new SafetensorsError(
        `${where}: dtype ${JSON.stringify(e.dtype)} is not one of ${
          Object.keys(SAFETENSORS_DTYPE_BYTES).join(", ")
        }`,
      );
    }
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new SafetensorsError(
        `${where}: shape ${JSON.stringify(e.shape)} must be a list of whole numbers`,
      );
    }
    const off = e.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0) ||
      off[1] < off[0]
    ) {
      throw new SafetensorsError(
        `${where}: data_offsets ${JSON.stringify(off)} must be [begin, end], begin <= end`,
      );
    }
    const dtype = e.dtype as SafetensorsDType;
    const numel = (e.shape as number[]).reduce((a, b) => a * b, 1);
    const want = numel * SAFETENSORS_DTYPE_BYTES[dtype];
    if (off[1] - off[0] !== want) {
      throw new SafetensorsError(
        `${where}: shape [${e.shape}] ${dtype} needs ${want} bytes, data_offsets span ${off[1] - off[0]}`,
      );
    }
    tensors.set(name, { name, dtype, shape: e.shape as number[], begin: off[0], end: off[1], file });
  }
  const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const t of sorted) {
    if (t.begin !== pos) {
      throw new SafetensorsError(
        `${file}: tensor "${t.name}" starts at data byte ${t.begin}, expected ${pos}: the offsets must tile ` +
          `the data without gaps or overlaps`,
      );
    }
    pos = t.end;
  }
  if (pos !== dataBytes) {
    throw new SafetensorsError(
      `${file}: the tensors cover ${pos} bytes of data but the file holds ${dataBytes} after the header ` +
        `(truncated or padded file?)`,
    );
  }
  return { tensors, metadata };
}

async function readExactly(f: Deno.FsFile, buf: Uint8Array, file: string, what: string): Promise<void> {
  let got = 0;
  while (got < buf.length) {
    const n = await f.read(buf.subarray(got));
    if (n === null) throw new SafetensorsError(`${file}: unexpected end of file reading ${what}`);
    got += n;
  }
}

/** One open .safetensors file. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
    readonly dataStart: number,
    private file: Deno.FsFile,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    let f: Deno.FsFile;
    try {
      f = await Deno.open(path, { read: true });
    } catch (e) {
      throw new SafetensorsError(`${path}: cannot open (${(e as Error).message})`);
    }
    try {
      const size = (await f.stat()).size;
      if (size < 8) throw new SafetensorsError(`${path}: ${size} bytes is too short for a safetensors file`);
      const lenBytes = new Uint8Array(8);
      await readExactly(f, lenBytes, path, "the header length");
      const n = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
      if (n < 2 || n > MAX_HEADER_BYTES || 8 + n > size) {
        throw new SafetensorsError(
          `${path}: header length ${n} is not plausible for a file of ${size} bytes (at most ${MAX_HEADER_BYTES})`,
        );
      }
      const header = new Uint8Array(n);
      await readExactly(f, header, path, "the header");
      const json = new TextDecoder().decode(header);
      const { tensors, metadata } = parseHeader(path, json, size - 8 - n);
      return new SafetensorsFile(path, tensors, metadata, 8 + n, f);
    } catch (e) {
      f.close();
      throw e;
    }
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.path}: no tensor "${name}"`);
    return t;
  }

  /** The raw little-endian bytes of one tensor (a fresh, 8-byte aligned buffer). */
  async read(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    const out = new Uint8Array(t.end - t.begin);
    await this.file.seek(this.dataStart + t.begin, Deno.SeekMode.Start);
    await readExactly(this.file, out, this.path, `tensor "${name}"`);
    return out;
  }

  close(): void {
    try {
      this.file.close();
    } catch {
      // already closed
    }
  }
}

/** A checkpoint folder or file: one .safetensors file, or shards listed by an index.json. */
export class SafetensorsCheckpoint {
  private constructor(readonly files: SafetensorsFile[], readonly tensors: Map<string, TensorInfo>) {}

  /** Opens `path`: a .safetensors file, an index.json, or a folder holding model.safetensors or
   * model.safetensors.index.json (or adapter_model.safetensors). */
  static async open(path: string): Promise<SafetensorsCheckpoint> {
    let stat: Deno.FileInfo;
    try {
      stat = await Deno.stat(path);
    } catch (e) {
      throw new SafetensorsError(`${path}: not found (${(e as Error).message})`);
    }
    let target = path;
    if (stat.isDirectory) {
      const candidates = ["model.safetensors.index.json", "model.safetensors", "adapter_model.safetensors"];
      let found: string | undefined;
      for (const c of candidates) {
        try {
          await Deno.stat(`${path}/${c}`);
          found = `${path}/${c}`;
          break;
        } catch {
          // next
        }
      }
      if (!found) {
        throw new SafetensorsError(`${path}: no ${candidates.join(" or ")} in the folder`);
      }
      target = found;
    }
    if (target.endsWith(".json")) return await SafetensorsCheckpoint.#openIndex(target);
    const f = await SafetensorsFile.open(target);
    return new SafetensorsCheckpoint([f], new Map(f.tensors));
  }

  static async #openIndex(indexPath: string): Promise<SafetensorsCheckpoint> {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(await Deno.readTextFile(indexPath));
    } catch (e) {
      throw new SafetensorsError(`${indexPath}: cannot read the index (${(e as Error).message})`);
    }
    const map = index.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new SafetensorsError(`${indexPath}: no "weight_map" object`);
    }
    const dir = indexPath.includes("/") ? indexPath.slice(0, indexPath.lastIndexOf("/")) : ".";
    const shardNames = [...new Set(Object.values(map))].sort();
    const files: SafetensorsFile[] = [];
    const tensors = new Map<string, TensorInfo>();
    try {
      for (const s of shardNames) {
        if (typeof s !== "string" || s.includes("/") || s.includes("\\")) {
          throw new SafetensorsError(
            `${indexPath}: shard name ${JSON.stringify(s)} must be a plain file name`,
          );
        }
        const f = await SafetensorsFile.open(`${dir}/${s}`);
        files.push(f);
        for (const [name, info] of f.tensors) {
          if (map[name] !== s) {
            throw new SafetensorsError(
              `${f.path}: tensor "${name}" is not listed for this shard in ${indexPath} (listed: ${
                map[name]
              })`,
            );
          }
          tensors.set(name, info);
        }
      }
      for (const [name, s] of Object.entries(map)) {
        if (!tensors.has(name)) {
          throw new SafetensorsError(
            `${indexPath}: tensor "${name}" is listed in ${s} but that shard lacks it`,
          );
        }
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    return new SafetensorsCheckpoint(files, tensors);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) {
      throw new SafetensorsError(
        `checkpoint ${this.files.map((f) => f.path).join(", ")}: no tensor "${name}"`,
      );
    }
    return t;
  }

  async read(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    return await this.files.find((f) => f.path === info.file)!.read(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

/** One tensor to write; `data` may be produced on demand so a large file never sits whole in memory. */
export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  data: Uint8Array | (() => Promise<Uint8Array>);
}

/** Writes a .safetensors file atomically (to `path`.tmp-<pid>, then renamed over `path`). Tensors
 * are stored in the given order; the header is padded with spaces to a multiple of 8 bytes. */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let pos = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new SafetensorsError(`${path}: tensor "${t.name}" given twice`);
    seen.add(t.name);
    if (!(t.dtype in SAFETENSORS_DTYPE_BYTES)) {
      throw new SafetensorsError(`${path}: "${t.name}" dtype ${t.dtype}`);
    }
    const bytes = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + bytes] };
    pos += bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const tmp = `${path}.tmp-${Deno.pid}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
    await writeAll(f, len);
    await writeAll(f, json);
    for (const t of tensors) {
      const data = typeof t.data === "function" ? await t.data() : t.data;
      const want = (header[t.name] as { data_offsets: number[] }).data_offsets;
      if (data.byteLength !== want[1] - want[0]) {
        throw new SafetensorsError(
          `${path}: tensor "${t.name}" [${t.shape}] ${t.dtype} needs ${
            want[1] - want[0]
          } bytes, got ${data.byteLength}`,
        );
      }
      await writeAll(f, data);
    }
    await f.sync();
    f.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      f.close();
    } catch {
      // closed
    }
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await f.write(data.subarray(off));
}

/** Bytes of a typed array, for writing. */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Decodes raw tensor bytes of F32 / F16 / BF16 to numbers. */
export function decodeFloats(dtype: SafetensorsDType, bytes: Uint8Array): Float32Array {
  const copy = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case "F32":
      return new Float32Array(copy.buffer, copy.byteOffset, copy.byteLength / 4).slice();
    case "F16":
      return Float32Array.from(new Float16Array(copy.buffer, copy.byteOffset, copy.byteLength / 2));
    case "BF16": {
      const u16 = new Uint16Array(copy.buffer, copy.byteOffset, copy.byteLength / 2);
      const out = new Uint32Array(u16.length);
      for (let i = 0; i < u16.length; i++) out[i] = u16[i] << 16;
      return new Float32Array(out.buffer);
    }
    default:
      throw new SafetensorsError(`decodeFloats: dtype ${dtype} is not a float type`);
  }
}
