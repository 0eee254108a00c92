import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert";
import {
  bytesOf,
  decodeFloats,
  parseHeader,
  SafetensorsCheckpoint,
  SafetensorsFile,
  writeSafetensors,
} from "./safetensors.ts";

Deno.test("safetensors: write then stream back, metadata, 8-byte header, no temp file left", async () => {
  const dir = await Deno.makeTempDir();
  const a = Float32Array.from([1, 2, 3, -4.5, 0, 6]);
  const b = Uint8Array.from([7, 8, 9]);
  await writeSafetensors(`${dir}/m.safetensors`, [
    { name: "a", dtype: "F32", shape: [2, 3], data: bytesOf(a) },
    { name: "b", dtype: "U8", shape: [3], data: () => Promise.resolve(b) },
  ], { format: "pt" });
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
  const raw = await Deno.readFile(`${dir}/m.safetensors`);
  assert(Number(new DataView(raw.buffer).getBigUint64(0, true)) % 8 === 0);
  const f = await SafetensorsFile.open(`${dir}/m.safetensors`);
  assertEquals(f.metadata, { format: "pt" });
  assertEquals(f.info("a").shape, [2, 3]);
  assertEquals(decodeFloats("F32", await f.read("a")), a);
  assertEquals(await f.read("b"), b);
  f.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: sharded checkpoint through model.safetensors.index.json", async () => {
  const dir = await Deno.makeTempDir();
  const f16 = new Uint16Array(new Float16Array([0.5, -2]).buffer);
  await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, [{
    name: "x",
    dtype: "F16",
    shape: [2],
    data: bytesOf(f16),
  }]);
  const bf = Uint16Array.from([0x3f80, 0xc000]); // 1, -2
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, [{
    name: "y",
    dtype: "BF16",
    shape: [2],
    data: bytesOf(bf),
  }]);
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({
      weight_map: { x: "model-00001-of-00002.safetensors", y: "model-00002-of-00002.safetensors" },
    }),
  );
  const c = await SafetensorsCheckpoint.open(dir);
  assertEquals(decodeFloats("F16", await c.read("x")), Float32Array.from([0.5, -2]));
  assertEquals(decodeFloats("BF16", await c.read("y")), Float32Array.from([1, -2]));
  c.close();
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({
      weight_map: { x: "model-00001-of-00002.safetensors", y: "model-00001-of-00002.safetensors" },
    }),
  );
  await rejects(() => SafetensorsCheckpoint.open(dir), /"y" is listed/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: header validation names the file and tensor", async () => {
  const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  parseHeader("f", JSON.stringify(ok), 8);
  const bad = (h: unknown, bytes: number, re: RegExp) => {
    let msg = "";
    try {
      parseHeader("f.safetensors", JSON.stringify(h), bytes);
    } catch (e) {
      msg = (e as Error).message;
    }
    assert(re.test(msg), `expected ${re}, got "${msg}"`);
  };
  bad(
    { a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } },
    8,
    /f.safetensors: tensor "a": shape \[3\] F32 needs 12/,
  );
  bad({ a: { dtype: "Q4", shape: [2], data_offsets: [0, 8] } }, 8, /tensor "a": dtype "Q4"/);
  bad(
    { ...ok, b: { dtype: "U8", shape: [4], data_offsets: [12, 16] } },
    16,
    /"b" starts at data byte 12, expected 8/,
  );
  bad(ok, 12, /cover 8 bytes of data but the file holds 12/);
  const dir = await Deno.makeTempDir();
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  await Deno.writeFile(`${dir}/x.safetensors`, huge);
  await rejects(() => SafetensorsFile.open(`${dir}/x.safetensors`), /x.safetensors: header length/);
  await Deno.remove(dir, { recursive: true });
});
