/**
 * Reads V8 heap snapshots (the .heapsnapshot JSON that `--heapsnapshot-signal` writes) down to what a
 * leak check needs: the live size per kind of object (constructor name, or V8's category for strings,
 * code and internals), and the difference between two snapshots of the same process.
 */
import { readFileSync } from 'node:fs';

export interface HeapSummary {
  totalBytes: number;
  byKind: Map<string, { count: number; bytes: number }>;
}

export interface HeapGrowth {
  kind: string;
  count: number;
  bytes: number;
}

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

/** Kinds whose names are instance data (every string its own name), folded into one kind each. */
const FOLDED_TYPES = new Set(['string', 'concatenated string', 'sliced string', 'code', 'number', 'regexp', 'closure']);

export function readHeapSnapshot(file: string): HeapSummary {
  const raw = JSON.parse(readFileSync(file, 'utf8')) as RawSnapshot;
  const fields = raw.snapshot.meta.node_fields;
  const typeNames = raw.snapshot.meta.node_types[0];
  const width = fields.length;
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [number, number, number];
  const byKind = new Map<string, { count: number; bytes: number }>();
  let totalBytes = 0;
  for (let i = 0; i < raw.nodes.length; i += width) {
    const type = typeNames[raw.nodes[i + typeAt]!]!;
    const kind = FOLDED_TYPES.has(type) ? `(${type})` : `${raw.strings[raw.nodes[i + nameAt]!]!.slice(0, 60)} [${type}]`;
    const size = raw.nodes[i + sizeAt]!;
    const entry = byKind.get(kind) ?? { count: 0, bytes: 0 };
    entry.count += 1;
    entry.bytes += size;
    byKind.set(kind, entry);
    totalBytes += size;
  }
  return { totalBytes, byKind };
}

/** What grew from `before` to `after`, largest first; and the growth without compiled code (JIT tiering, bounded). */
export function compareHeapSnapshots(before: HeapSummary, after: HeapSummary): { grown: HeapGrowth[]; objectBytesGrowth: number } {
  const grown: HeapGrowth[] = [];
  let objectBytesGrowth = 0;
  for (const kind of new Set([...before.byKind.keys(), ...after.byKind.keys()])) {
    const b = before.byKind.get(kind) ?? { count: 0, bytes: 0 };
    const a = after.byKind.get(kind) ?? { count: 0, bytes: 0 };
    const bytes = a.bytes - b.bytes;
    if (kind !== '(code)') objectBytesGrowth += bytes;
    if (bytes > 0) grown.push({ kind, count: a.count - b.count, bytes });
  }
  grown.sort((x, y) => y.bytes - x.bytes);
  return { grown, objectBytesGrowth };
}
