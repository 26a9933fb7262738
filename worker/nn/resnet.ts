// The CIFAR-style residual network of He et al. 2016 (§4.2) as a graph, exactly
// as docs/models.md's 20-line PyTorch module defines it: stem conv3×3(C→16) → norm →
// ReLU; three stages of N BasicBlocks (16, 32, 64 channels, the first block of
// stages 2 and 3 with stride 2, a conv1×1 + norm shortcut where the shape
// changes); global average pool → Linear(64 → classes). Not ImageNet ResNets.

import { ErrorCode, SyncbnError } from "../../shared/errors.js";
import type { Rng } from "../../shared/rng.js";
import { GlobalAvgPool } from "./avgpool.js";
import { Conv2d } from "./conv2d.js";
import { Add, type Graph, type GraphBuilder, type Value } from "./graph.js";
import { Linear } from "./linear.js";
import type { NormFactory } from "./model.js";
import { ReLU } from "./relu.js";

/** Largest N accepted by --model resnet:N (resnet:200 is ResNet-1202). */
export const RESNET_MAX_BLOCKS = 200;
const STAGE_CHANNELS = [16, 32, 64] as const;

/** Channels of every norm layer of resnet:N in forward order: 6N + 3 of them (stem, two per block, two shortcuts). */
export function resnetNormChannels(blocks: number): number[] {
  const out = [16];
  let cin = 16;
  for (const c of STAGE_CHANNELS) {
    for (let b = 0; b < blocks; b++) {
      out.push(c, c);
      if (b === 0 && c !== cin) out.push(c);
      cin = c;
    }
  }
  return out;
}

/**
 * Appends resnet:`blocks` to g (whose input is the (C, H, W) image) and finishes it.
 * Node order is the PyTorch module's registration order, so params and running
 * statistics come out in state_dict order; so does the seeded init's draw order.
 */
export function buildResnet(g: GraphBuilder, blocks: number, classes: number, rng: Rng, norm: NormFactory): Graph {
  if (g.input.shape.length !== 3) {
    throw new SyncbnError(ErrorCode.BadConfig, `--model resnet:${blocks} needs (C, H, W) images, got ${g.input.shape.join("×")}`);
  }
  /** conv k×k without bias, pad (k−1)/2, on value v (C, H, W). */
  const conv = (name: string, v: Value, cout: number, k: number, stride: number): Value => {
    const [c, h, w] = v.shape as [number, number, number];
    return g.layer(new Conv2d(name, c, cout, k, stride, (k - 1) / 2, h, w, rng, undefined, false), v);
  };
  const relu = (name: string, v: Value): Value => g.layer(new ReLU(name, v.shape), v);

  let v = relu("relu", norm(g, "bn1", conv("conv1", g.input, 16, 3, 1)));
  let channels = 16;
  STAGE_CHANNELS.forEach((out, stage) => {
    for (let b = 0; b < blocks; b++) {
      const p = `layer${stage + 1}.${b}`;
      const stride = b === 0 && stage > 0 ? 2 : 1;
      let main = relu(`${p}.relu1`, norm(g, `${p}.bn1`, conv(`${p}.conv1`, v, out, 3, stride)));
      main = norm(g, `${p}.bn2`, conv(`${p}.conv2`, main, out, 3, 1));
      const shortcut = stride !== 1 || channels !== out ? norm(g, `${p}.downsample.1`, conv(`${p}.downsample.0`, v, out, 1, stride)) : v;
      v = relu(`${p}.relu2`, g.apply(new Add(`${p}.add`, main.shape), main, shortcut));
      channels = out;
    }
  });
  const [, h, w] = v.shape as [number, number, number];
  v = g.layer(new GlobalAvgPool("avgpool", channels, h, w), v);
  v = g.layer(new Linear("fc", channels, classes, rng), v);
  return g.finish(v);
}
