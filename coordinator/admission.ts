// Who may join a run: the checks of a worker's hello against the coordinator's
// protocol version, token, world size and taken ranks, each refusal saying what
// to do. Conventions are compared by the coordinator (it may adopt them). No I/O.

import { ErrorCode, SyncbnError } from "../shared/errors.js";
import { PROTOCOL_VERSION, type Hello } from "../shared/protocol.js";

export interface AdmissionState {
  /** Required token; "" accepts any. */
  token: string;
  worldSize: number;
  /** Whether hello.rank is held by a connected (or finished) worker. */
  rankTaken: boolean;
}

/** The reason to refuse this hello, or null to go on. */
export function admissionProblem(hello: Hello, run: AdmissionState): SyncbnError | null {
  const ctx = { rank: hello.rank };
  if (hello.version !== PROTOCOL_VERSION) {
    return new SyncbnError(ErrorCode.Version, `protocol version ${hello.version} differs from the coordinator's ${PROTOCOL_VERSION}; run the same syncbn version everywhere`, ctx);
  }
  if (run.token !== "" && hello.token !== run.token) {
    return new SyncbnError(ErrorCode.Token, "wrong run token; pass the coordinator's --token (or SYNCBN_TOKEN)", ctx);
  }
  if (hello.worldSize !== run.worldSize || hello.rank >= run.worldSize) {
    return new SyncbnError(
      ErrorCode.Rank,
      `worker says rank ${hello.rank} of world size ${hello.worldSize}, but the coordinator runs world size ${run.worldSize} (ranks 0..${run.worldSize - 1})`,
      ctx,
    );
  }
  if (run.rankTaken) {
    return new SyncbnError(ErrorCode.DuplicateRank, `rank ${hello.rank} is already taken by another worker; give every worker a distinct --rank`, ctx);
  }
  return null;
}
