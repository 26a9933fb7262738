// A model's weights as PyTorch names them (its state_dict), out to
// `weights.safetensors` and in from `--init FILE.safetensors`. stateDict() is the
// one place that knows the names; the file format itself is safetensors.ts.
// Not a checkpoint: no optimizer state, no step (see checkpoint.ts for resuming).

import { parseNorm } from "../shared/config.js";
import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { loadDataset } from "./data/dataset.js";
import { buildModel, type Model } from "./nn/model.js";
import {
  float32Tensor,
  floatValues,
  int64Scalar,
  integerValues,
  readSafetensors,
  writeSafetensors,
  type SafetensorsFile,
  type TensorBytes,
} from "./safetensors.js";
import { conventionsOf, type TrainSettings } from "./settings.js";

/**
 * One entry of the state_dict, bound to the model's live storage. "float":
 * parameters (float32) and running statistics (kept in float64, saved as float32);
 * "count": num_batches_tracked (int64, a 0-d tensor in PyTorch).
 */
export type StateEntry =
  | { name: string; shape: number[]; buffer: boolean; kind: "float"; values: Float32Array | Float64Array }
  | { name: string; shape: number[]; buffer: true; kind: "count"; get(): number; set(n: number): void };

/**
 * The model's state_dict (Model.namedTensors(), the one place that names them)
 * bound to its live storage: parameters, then per norm layer with running
 * statistics running_mean, running_var, num_batches_tracked.
 */
export function stateDict(model: Model): StateEntry[] {
  return model.namedTensors().map((t): StateEntry => {
    const shape = [...t.shape];
    if (t.kind === "param") return { name: t.name, shape, buffer: false, kind: "float", values: t.param.value };
    if (t.kind === "num_batches_tracked") {
      const layer = t.layer;
      return { name: t.name, shape, buffer: true, kind: "count", get: () => layer.tracked, set: (n) => (layer.tracked = n) };
    }
    return { name: t.name, shape, buffer: true, kind: "float", values: t.value };
  });
}

/** The state_dict as safetensors tensors: float32 for parameters and statistics, int64 for counts. */
export function stateTensors(model: Model): Map<string, TensorBytes> {
  const m = new Map<string, TensorBytes>();
  for (const e of stateDict(model)) m.set(e.name, e.kind === "float" ? float32Tensor(e.shape, e.values) : int64Scalar(e.get()));
  return m;
}

/** Writes `weights.safetensors` atomically; metadata says which model and step it is. */
export function writeWeights(path: string, model: Model, meta: { norm: string; step: number }): void {
  writeSafetensors(path, stateTensors(model), { format: "pt", model: model.kind, norm: meta.norm, step: String(meta.step) });
}

/** Reads an --init file; any problem with the file is one BadConfig line naming it (a flag's value, exit 2). */
export function readInitFile(file: string): SafetensorsFile {
  try {
    return readSafetensors(file);
  } catch (e) {
    if (e instanceof SyncbnError && e.code === ErrorCode.Data) throw new SyncbnError(ErrorCode.BadConfig, `--init ${e.detail}`);
    throw e;
  }
}

export const INIT_AND_RESUME =
  "--init and --resume both given: --resume continues a run (weights, optimizer state, step), --init starts a new one from weights; pass one";

const shapeText = (s: readonly number[]): string => (s.length === 0 ? "scalar" : s.join("×"));

/**
 * Checks that `init` fits the model exactly (PyTorch's load_state_dict(strict=True)),
 * then copies it in; throws one BadConfig line naming every missing, extra,
 * misshaped or unusable tensor, and copies nothing unless all fit. Parameters are
 * required; the running statistics (running_mean, running_var,
 * num_batches_tracked) are loaded when the file has them, and then must all be there.
 */
export function loadInit(model: Model, init: SafetensorsFile, file: string, what: string): void {
  const entries = stateDict(model);
  const known = new Set(entries.map((e) => e.name));
  const hasBuffers = entries.some((e) => e.buffer && init.tensors.has(e.name));
  const missing: string[] = [];
  const misshaped: string[] = [];
  const unusable: string[] = [];
  const apply: (() => void)[] = [];
  for (const e of entries) {
    const t = init.tensors.get(e.name);
    if (!t) {
      if (!e.buffer || hasBuffers) missing.push(e.name);
      continue;
    }
    if (t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
      misshaped.push(`${e.name} (file ${shapeText(t.shape)}, model ${shapeText(e.shape)})`);
      continue;
    }
    if (e.kind === "float") {
      const v = floatValues(t);
      if (!v) {
        unusable.push(`${e.name} has dtype ${t.dtype}, not F32, F64, F16 or BF16`);
        continue;
      }
      // Finite as float32, not only as read: an F64 1e300 would become +Inf in the model or in weights.safetensors.
      const bad = v.findIndex((x) => !Number.isFinite(Math.fround(x)));
      const negative = e.name.endsWith(".running_var") ? v.findIndex((x) => x < 0) : -1;
      if (bad >= 0) unusable.push(`${e.name}[${bad}] is ${v[bad]}${Number.isFinite(v[bad]) ? ", which overflows float32" : ""}`);
      else if (negative >= 0) unusable.push(`${e.name}[${negative}] is ${v[negative]}, a negative variance`);
      else apply.push(() => e.values.set(v));
    } else {
      const v = integerValues(t);
      if (!v) unusable.push(`${e.name} has dtype ${t.dtype}, not an integer type`);
      else if (v[0]! < 0n || v[0]! > BigInt(Number.MAX_SAFE_INTEGER)) unusable.push(`${e.name} is ${v[0]}`);
      else apply.push(() => e.set(Number(v[0]!)));
    }
  }
  const extra = [...init.tensors.keys()].filter((n) => !known.has(n));
  const problems = [
    missing.length ? `missing ${missing.join(", ")}` : "",
    extra.length ? `extra ${extra.join(", ")}` : "",
    misshaped.length ? `misshaped ${misshaped.join(", ")}` : "",
    unusable.length ? `unusable ${unusable.join("; ")}` : "",
  ].filter(Boolean);
  if (problems.length > 0) {
    throw new SyncbnError(ErrorCode.BadConfig, `--init ${file} does not fit ${what}: ${problems.join("; ")}. Save the model's full state_dict (names in docs/formats.md and docs/models.md)`);
  }
  for (const f of apply) f();
}

/**
 * The launcher's up-front check of `--init` (before any process starts): reads the
 * file and fits it to the model these settings build, whose input shape and class
 * count come from one sample of the data. Returns the file and that model (its
 * norm layers give the running statistics' layer order).
 */
export async function checkInitUpFront(file: string, s: TrainSettings, fashionMnistDir?: string): Promise<{ init: SafetensorsFile; model: Model }> {
  const init = readInitFile(file);
  const probe = await loadDataset(s.data, { seed: s.seed, trainSize: 1, testSize: 1, fashionMnistDir });
  // The same model worker/train.ts builds, without a collective: only names and shapes matter here.
  const model = buildModel({
    kind: s.model,
    inShape: probe.train.sampleShape,
    classes: probe.train.classes,
    norm: parseNorm(s.norm),
    conventions: conventionsOf(s),
    sync: null,
    seed: s.seed,
    renorm: { rMax: s.renormRMax, dMax: s.renormDMax, warmup: s.renormWarmup, clock: null },
  });
  loadInit(model, init, file, `--model ${s.model} --norm ${s.norm}`);
  return { init, model };
}
