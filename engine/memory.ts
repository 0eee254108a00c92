// Byte accounting of GPU buffers: live and peak bytes, in total and by category, and the bytes of
// released buffers kept in the pool for reuse (engine/buffers.ts), which still occupy the GPU: the
// peak counts them.

export type MemoryCategory =
  | "weights"
  | "lora"
  | "optimizer"
  | "activations"
  | "workspace"
  | "staging";

export const MEMORY_CATEGORIES: readonly MemoryCategory[] = [
  "weights",
  "lora",
  "optimizer",
  "activations",
  "workspace",
  "staging",
];

export interface MemoryReport {
  /** Bytes of buffers in use (pooled ones not counted). */
  liveBytes: number;
  /** Bytes of released buffers kept for reuse. */
  pooledBytes: number;
  /** Highest live + pooled bytes: what the GPU held. */
  peakBytes: number;
  live: Record<MemoryCategory, number>;
  /** Bytes of each category at the moment the total peaked. */
  atPeak: Record<MemoryCategory, number>;
}

function zeros(): Record<MemoryCategory, number> {
  return Object.fromEntries(MEMORY_CATEGORIES.map((c) => [c, 0])) as Record<MemoryCategory, number>;
}

export class MemoryLedger {
  #live = zeros();
  #atPeak = zeros();
  #liveBytes = 0;
  #pooledBytes = 0;
  #peakBytes = 0;

  add(category: MemoryCategory, bytes: number): void {
    this.#live[category] += bytes;
    this.#liveBytes += bytes;
    this.#notePeak();
  }

  /** Bytes of released buffers kept for reuse. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }

  /** A released buffer of `bytes` kept for reuse. */
  pool(bytes: number): void {
    this.#pooledBytes += bytes;
    this.#notePeak();
  }

  /** A pooled buffer reused or destroyed. */
  unpool(bytes: number): void {
    this.#pooledBytes -= bytes;
  }

  #notePeak(): void {
    if (this.#liveBytes + this.#pooledBytes > this.#peakBytes) {
      this.#peakBytes = this.#liveBytes + this.#pooledBytes;
      this.#atPeak = { ...this.#live };
    }
  }

  remove(category: MemoryCategory, bytes: number): void {
    this.#live[category] -= bytes;
    this.#liveBytes -= bytes;
  }

  /** Starts a new peak window at the current live + pooled bytes. */
  resetPeak(): void {
    this.#peakBytes = this.#liveBytes + this.#pooledBytes;
    this.#atPeak = { ...this.#live };
  }

  report(): MemoryReport {
    return {
      liveBytes: this.#liveBytes,
      pooledBytes: this.#pooledBytes,
      peakBytes: this.#peakBytes,
      live: { ...this.#live },
      atPeak: { ...this.#atPeak },
    };
  }
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}
