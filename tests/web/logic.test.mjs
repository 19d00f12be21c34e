// Tests of the frontend's pure logic, run by node's built-in test runner (tests/test_web.py).
import { test } from "node:test";
import assert from "node:assert/strict";
import { snapLength, snapSize, shiftSigma, flowSigmas, curvePoints } from "../../web/flowdit_logic.js";

test("length snaps to the nearest 4n+1", () => {
  assert.equal(snapLength(1), 1);
  assert.equal(snapLength(2), 1);
  assert.equal(snapLength(4), 5);
  assert.equal(snapLength(80), 81);
  assert.equal(snapLength(81), 81);
  assert.equal(snapLength(0), 1);
  for (let f = 1; f < 200; f++) assert.equal((snapLength(f) - 1) % 4, 0);
});

test("sizes snap to multiples of the stride, never below one stride", () => {
  assert.equal(snapSize(832, 16), 832);
  assert.equal(snapSize(833, 16), 832);
  assert.equal(snapSize(840, 16), 848);
  assert.equal(snapSize(3, 32), 32);
});

test("shift formula k*s/(1+(k-1)*s)", () => {
  assert.equal(shiftSigma(1, 5), 1);
  assert.equal(shiftSigma(0, 5), 0);
  assert.ok(Math.abs(shiftSigma(0.5, 3) - 0.75) < 1e-12);
});

test("4 steps with shift 5 by hand: [1, 0.9375, 0.8333, 0.625, 0]", () => {
  const expected = [1, 15 / 16, 5 / 6, 5 / 8, 0];
  flowSigmas(4, 5).forEach((s, i) => assert.ok(Math.abs(s - expected[i]) < 1e-12, `${i}: ${s}`));
});

test("denoise starts below 1 and the schedule decreases to 0", () => {
  const s = flowSigmas(10, 1, 0.6);
  assert.ok(Math.abs(s[0] - 0.6) < 1e-12);
  assert.equal(s[s.length - 1], 0);
  for (let i = 1; i < s.length; i++) assert.ok(s[i] < s[i - 1]);
});

test("curve points span the box", () => {
  const pts = curvePoints([1, 0.5, 0], 10, 20, 100, 50);
  assert.deepEqual(pts[0], [10, 20]);
  assert.deepEqual(pts[2], [110, 70]);
});
