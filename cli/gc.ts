// V8's incremental marking, off in every syncbn process: the CLI with its
// coordinator, worker processes (they run this CLI) and worker threads (V8 flags
// are per process). Imported first by main.ts, before the other modules load.
//
// Why (docs/performance.md, "What made it fast"): a syncbn process keeps a
// small JavaScript heap (about 12 MB; tensors live in ArrayBuffers outside it)
// and allocates steadily on the round path. On such a heap V8 started a new
// incremental marking almost as soon as the last one ended: 112–123 full
// mark-compacts in a 400-step 64-rank mlp run in the coordinator's process alone
// (17 % of its samples), about 50 in each worker process, 71 with worker threads.
// Without incremental marking a full collection runs only when the old generation
// reaches its limit or external memory grows past V8's bound (1–2 in the same
// run); the young generation is collected as before, and the ArrayBuffers the
// rounds bring in die young with their objects.
// SYNCBN_GC=v8 keeps V8's default (cli/env.ts checks the value).

import { setFlagsFromString } from "node:v8";

if (process.env.SYNCBN_GC !== "v8") setFlagsFromString("--no-incremental-marking");
