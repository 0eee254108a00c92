import { LossScaler } from "./loss_scaler.ts";

function eq(a: unknown, b: unknown, what: string): void {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}: got ${JSON.stringify(a)}, expected ${JSON.stringify(b)}`);
  }
}

Deno.test("loss scaler: backoff on non-finite, growth after the interval, state round trip", () => {
  const s = new LossScaler({ initScale: 1024, growthInterval: 3 });
  eq(s.update(true), true, "non-finite skips");
  eq(s.scale, 512, "halved");
  eq([s.update(false), s.update(false)], [false, false], "clean steps");
  eq(s.scale, 512, "not yet grown");
  s.update(false);
  eq(s.scale, 1024, "grown after 3 clean steps");
  s.update(false);
  const saved = s.state();
  eq(saved, { scale: 1024, growthTracker: 1, skippedSteps: 1 }, "state");
  const t = new LossScaler({ initScale: 1, growthInterval: 3 });
  t.load(saved);
  s.update(false);
  s.update(false);
  t.update(false);
  t.update(false);
  eq(t.state(), s.state(), "resumed scaler follows the same path");
  eq(s.scale, 2048, "grown again");
  const fixed = new LossScaler({ initScale: 8, dynamic: false });
  eq([fixed.update(true), fixed.scale], [true, 8], "static scale still skips");
});
