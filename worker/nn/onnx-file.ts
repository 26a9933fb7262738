// Reading an ONNX file: decoding it (onnx-buf, a generated schema on
// @bufbuild/protobuf; `onnx-proto` fails as ESM on Node 20) with a one-line refusal
// for bytes that are not ONNX, the file's hash workers compare, and the export line
// refusals quote. Not the import of its graph (onnx-import.ts).

import { createHash } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, type ModelProto } from "onnx-buf";
import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import { MAX_MODEL_FILE_BYTES, readInputFile } from "../input-file.js";

/** The export line docs/models.md gives, quoted where a graph cannot have come from it. */
export const EXPORT_LINE =
  'torch.onnx.export(copy.deepcopy(model), torch.randn(2, C, H, W), "model.onnx", training=torch.onnx.TrainingMode.TRAINING, ' +
  'do_constant_folding=False, input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})';

/** A 16-hex-digit SHA-256 prefix of the file: equal iff the graphs (and initial weights) agree. */
export function onnxHash(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 16);
}

const fileHashes = new Map<string, string>();
/** onnxHash of the file at path (read once per process), or "unreadable" (the import then refuses it with the reason). */
export function onnxFileHash(path: string): string {
  let h = fileHashes.get(path);
  if (h === undefined) {
    try {
      h = onnxHash(readInputFile(path, MAX_MODEL_FILE_BYTES));
    } catch {
      h = "unreadable";
    }
    fileHashes.set(path, h);
  }
  return h;
}

/** Decodes the model, or a one-line refusal for bytes that are not ONNX or are cut short. */
export function decodeOnnx(bytes: Uint8Array, path: string): ModelProto {
  let m: ModelProto;
  try {
    m = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    const truncated = /premature|eof|out of range|index out of/i.test(String(e));
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: ${truncated ? "truncated ONNX file" : "not an ONNX file"} (${(e as Error).message}); export it with ${EXPORT_LINE}`);
  }
  if (!m.graph || m.graph.node.length === 0 || m.irVersion === 0n) {
    throw new SyncbnError(ErrorCode.BadConfig, `--model ${path}: not an ONNX file (no graph); export it with ${EXPORT_LINE}`);
  }
  return m;
}
