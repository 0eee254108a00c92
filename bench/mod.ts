// Benchmarks: the harness contract and the table formatting of `deno task bench`.
export * from "./harness.ts";
export { formatTable } from "./main.ts";
