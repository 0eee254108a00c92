/**
 * File helpers for the data layer: strict UTF-8 reading with errors for people, JSON
 * reading, and all-or-nothing output folders (write into a temporary sibling folder, then
 * rename it into place).
 */
import { basename, dirname, join } from "node:path";

/** Reads a file as UTF-8, refusing invalid bytes. `hint` says what to do when it is missing. */
export async function readTextStrict(path: string, hint = ""): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${path}: file not found.${hint ? " " + hint : ""}`);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new Error(`${path}: is a folder, expected a file.${hint ? " " + hint : ""}`);
    }
    throw new Error(`${path}: cannot read: ${(e as Error).message}`);
  }
  return decodeUtf8Strict(bytes, path);
}

/**
 * Decodes UTF-8 (a leading BOM is dropped), throwing an error that names the file and the
 * byte offset and line of the first invalid sequence.
 */
export function decodeUtf8Strict(bytes: Uint8Array, path: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    const { offset, line } = firstInvalidUtf8(bytes);
    throw new Error(
      `${path}: not valid UTF-8 (first bad byte 0x${
        bytes[offset].toString(16).padStart(2, "0")
      } at byte ${offset}, line ${line}). Save the file as UTF-8 (e.g. ` +
        `\`iconv -f <its encoding> -t UTF-8 in.csv > out.csv\`, or "CSV UTF-8" in a spreadsheet).`,
    );
  }
}

function firstInvalidUtf8(b: Uint8Array): { offset: number; line: number } {
  let line = 1;
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    let n = 0;
    let min = 0;
    if (c < 0x80) {
      if (c === 0x0a) line++;
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      n = 1;
      min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      min = 0x10000;
    } else return { offset: i, line };
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return { offset: i, line };
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return { offset: i, line };
    i += n + 1;
  }
  return { offset: Math.max(0, b.length - 1), line };
}

/** Reads and parses a JSON file; errors name the file and what to do. */
export async function readJsonFile(path: string, hint = ""): Promise<unknown> {
  const text = await readTextStrict(path, hint);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message}).${hint ? " " + hint : ""}`);
  }
}

/** True when `path` exists and is a non-empty folder (or any file). */
export async function existsNonEmpty(path: string): Promise<boolean> {
  try {
    const st = await Deno.stat(path);
    if (!st.isDirectory) return true;
    for await (const _ of Deno.readDir(path)) return true;
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Throws an error for people when `outDir` may not be written: it is a file, or a non-empty
 * folder and `overwrite` is false.
 */
export async function checkOutDir(outDir: string, overwrite: boolean): Promise<void> {
  if (!(await existsNonEmpty(outDir))) return;
  const st = await Deno.stat(outDir);
  if (!st.isDirectory) {
    throw new Error(`${outDir}: exists and is not a folder. Choose another --out path.`);
  }
  if (!overwrite) {
    throw new Error(
      `${outDir}: folder exists and is not empty; refusing to overwrite it. ` +
        `Choose another --out folder, or pass --overwrite to replace it.`,
    );
  }
}

/**
 * Writes a whole output folder at once. `fill` writes files into a temporary folder beside
 * `outDir`; only when it succeeds is the temporary folder renamed to `outDir`. An existing
 * non-empty `outDir` is refused unless `overwrite` is set, and then it is replaced only after
 * the new content is complete (the old one is moved aside and removed last). On failure the
 * temporary folder is removed and `outDir` is untouched.
 */
export async function writeDirAtomic(
  outDir: string,
  fill: (tmpDir: string) => Promise<void>,
  options: { overwrite?: boolean } = {},
): Promise<void> {
  await checkOutDir(outDir, options.overwrite ?? false);
  const parent = dirname(outDir);
  await Deno.mkdir(parent, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: parent, prefix: `.${basename(outDir)}.tmp-` });
  if (Deno.build.os !== "windows") await Deno.chmod(tmp, 0o755);
  try {
    await fill(tmp);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  let old: string | null = null;
  try {
    await Deno.stat(outDir);
    old = join(parent, `.${basename(outDir)}.old-${crypto.randomUUID().slice(0, 8)}`);
    await Deno.rename(outDir, old);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw e;
    }
  }
  try {
    await Deno.rename(tmp, outDir);
  } catch (e) {
    if (old) await Deno.rename(old, outDir).catch(() => {});
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  if (old) await Deno.remove(old, { recursive: true });
}
