// The unshuffled sample order of `--shuffle off`: what PyTorch's
// DistributedSampler(shuffle=False, drop_last=True) with
// DataLoader(batch_size=B, drop_last=True) gives each rank. Only the order; the
// training loop reads it exactly as it reads a shuffled permutation.

/**
 * A permutation `order` of 0..count−1 such that the training loop's slice
 * order[(t·W + k)·B + j] (rank k, step t, j < B) is sample k + W·(t·B + j): rank
 * k takes every W-th sample from k, B at a time. Positions past the last full
 * global batch (never read: the remainder is dropped) keep file order.
 */
export function unshuffledOrder(count: number, worldSize: number, batch: number): Uint32Array {
  const order = Uint32Array.from({ length: count }, (_, i) => i);
  const steps = Math.floor(count / (worldSize * batch));
  for (let t = 0; t < steps; t++) {
    for (let k = 0; k < worldSize; k++) {
      for (let j = 0; j < batch; j++) order[(t * worldSize + k) * batch + j] = k + worldSize * (t * batch + j);
    }
  }
  return order;
}
