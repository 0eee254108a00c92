// Dynamic loss scaling for fp16 mixed precision, as torch.cuda.amp.GradScaler does it: the loss
// (its gradient seed) is multiplied by `scale`; after the backward the gradients are divided by
// it. A step whose gradients hold inf or NaN is skipped and the scale is multiplied by the
// backoff factor; after `growthInterval` clean steps in a row it is multiplied by the growth
// factor. The state is three numbers, saved in checkpoints for an exact resume.

export interface LossScalerOptions {
  /** Initial scale (torch: 2^16). */
  initScale?: number;
  /** Multiplier after growthInterval clean steps (torch: 2). */
  growthFactor?: number;
  /** Multiplier on a non-finite step (torch: 0.5). */
  backoffFactor?: number;
  /** Clean steps in a row before growing (torch: 2000). */
  growthInterval?: number;
  /** false: the scale never changes (non-finite steps are still reported for skipping). */
  dynamic?: boolean;
  /** The scale never goes below this (default 2^-24, the smallest f16 subnormal). */
  minScale?: number;
  /** The scale never grows above this (default 2^24). */
  maxScale?: number;
}

export interface LossScalerState {
  scale: number;
  /** Clean steps since the last change of scale. */
  growthTracker: number;
  /** Non-finite steps seen so far. */
  skippedSteps: number;
}

export class LossScaler {
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  readonly dynamic: boolean;
  readonly minScale: number;
  readonly maxScale: number;
  #scale: number;
  #tracker = 0;
  #skipped = 0;

  constructor(o: LossScalerOptions = {}) {
    this.#scale = o.initScale ?? 65536;
    this.growthFactor = o.growthFactor ?? 2;
    this.backoffFactor = o.backoffFactor ?? 0.5;
    this.growthInterval = o.growthInterval ?? 2000;
    this.dynamic = o.dynamic ?? true;
    this.minScale = o.minScale ?? 2 ** -24;
    this.maxScale = o.maxScale ?? 2 ** 24;
    if (!(this.#scale > 0 && Number.isFinite(this.#scale))) {
      throw new RangeError(`loss scale ${this.#scale} must be positive and finite`);
    }
    if (!(this.growthFactor > 1)) throw new RangeError(`growth factor ${this.growthFactor} must be > 1`);
    if (!(this.backoffFactor > 0 && this.backoffFactor < 1)) {
      throw new RangeError(`backoff factor ${this.backoffFactor} must lie in (0, 1)`);
    }
    if (!(Number.isInteger(this.growthInterval) && this.growthInterval >= 1)) {
      throw new RangeError(`growth interval ${this.growthInterval} must be an integer >= 1`);
    }
  }

  /** The current scale: multiply the loss gradient seed by it. */
  get scale(): number {
    return this.#scale;
  }

  get skippedSteps(): number {
    return this.#skipped;
  }

  /** Records the outcome of one step; returns true when the optimizer step must be skipped. */
  update(nonFinite: boolean): boolean {
    if (nonFinite) {
      this.#skipped++;
      this.#tracker = 0;
      if (this.dynamic) this.#scale = Math.max(this.minScale, this.#scale * this.backoffFactor);
      return true;
    }
    if (this.dynamic) {
      this.#tracker++;
      if (this.#tracker >= this.growthInterval) {
        this.#scale = Math.min(this.maxScale, this.#scale * this.growthFactor);
        this.#tracker = 0;
      }
    }
    return false;
  }

  state(): LossScalerState {
    return { scale: this.#scale, growthTracker: this.#tracker, skippedSteps: this.#skipped };
  }

  load(s: LossScalerState): void {
    if (!(s.scale > 0 && Number.isFinite(s.scale))) {
      throw new RangeError(`saved loss scale ${s.scale} is invalid`);
    }
    if (!(Number.isInteger(s.growthTracker) && s.growthTracker >= 0)) {
      throw new RangeError(`saved loss scale growth tracker ${s.growthTracker} is invalid`);
    }
    this.#scale = s.scale;
    this.#tracker = s.growthTracker;
    this.#skipped = s.skippedSteps ?? 0;
  }
}
