// The one codec of the wire: msgpackr with moreTypes, so Float32Array and
// Float64Array travel as typed-array extensions (without moreTypes msgpackr 2.x
// truncates their elements to bytes). Decoded typed arrays are fresh aligned copies.

import { Packr } from "msgpackr";
import type { ClientMessage, ServerMessage } from "./protocol.js";

const packr = new Packr({ useRecords: false, moreTypes: true });

export function encode(msg: ClientMessage | ServerMessage): Uint8Array {
  return packr.pack(msg);
}

/** Decodes bytes to an unvalidated value; throws on malformed msgpack. */
export function decode(bytes: Uint8Array): unknown {
  return packr.unpack(bytes);
}
