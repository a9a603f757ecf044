/**
 * The Quake 3 protocol's out-of-band queries, as a server browser speaks them to ioquake3 and
 * OpenArena: a datagram starting with four 0xFF bytes, `getinfo CHALLENGE` (answered by
 * `infoResponse` with the challenge echoed in the info string) and `getstatus` (`statusResponse`:
 * the server's variables and one line per player, "score ping "name"").
 *
 * ioquake3 limits these answers (code/server/sv_main.c, SVC_RateLimit): per source address a burst
 * of 10 then one a second, and for the whole server a burst of 10 then one every 100 ms. A probe
 * that wants a steady rate asks from several addresses and stays under 10 a second in all.
 */

export const QUAKE3_PORT = 27960;
/** The rate the whole server answers out-of-band queries at, at most (ioquake3's outbound bucket). */
export const QUAKE3_MAX_QUERIES_PER_SEC = 10;

const OOB = Buffer.from([0xff, 0xff, 0xff, 0xff]);

export function oobPacket(command: string): Buffer {
  return Buffer.concat([OOB, Buffer.from(command, 'latin1')]);
}

/** `\key\value\key\value` into a record. */
export function parseInfoString(text: string): Record<string, string> {
  const parts = text.replace(/^\\/, '').split('\\');
  const info: Record<string, string> = {};
  for (let i = 0; i + 1 < parts.length; i += 2) info[parts[i]!] = parts[i + 1]!;
  return info;
}

export interface Quake3Player {
  score: number;
  ping: number;
  name: string;
}

export type Quake3Reply =
  | { kind: 'info'; info: Record<string, string> }
  | { kind: 'status'; vars: Record<string, string>; players: Quake3Player[] }
  /** What a console command (rcon) printed. */
  | { kind: 'print'; text: string };

/** Reads an out-of-band answer; undefined for anything else. */
export function parseReply(packet: Buffer): Quake3Reply | undefined {
  if (packet.length < 5 || !packet.subarray(0, 4).equals(OOB)) return undefined;
  const text = packet.subarray(4).toString('latin1');
  const [head, first = '', ...rest] = text.split('\n');
  if (head === 'infoResponse') return { kind: 'info', info: parseInfoString(first) };
  if (head === 'statusResponse') {
    const players = rest
      .map((line) => /^(-?\d+) (\d+) "(.*)"$/.exec(line.trim()))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ score: Number(m[1]), ping: Number(m[2]), name: stripColours(m[3]!) }));
    return { kind: 'status', vars: parseInfoString(first), players };
  }
  if (head === 'print') return { kind: 'print', text: [first, ...rest].join('\n') };
  return undefined;
}

/** Quake 3 colours names with ^N escapes. */
export function stripColours(name: string): string {
  return name.replace(/\^./g, '');
}
