/** The REST API as the UI uses it: JSON in and out, the session's CSRF token on every change. */

export type Role = 'viewer' | 'operator' | 'admin';

export interface Session {
  user: string;
  role: Role;
  csrfToken?: string;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

let csrfToken: string | undefined;

export function rememberSession(session: Session): void {
  csrfToken = session.csrfToken;
}

export async function api<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const res = await fetch(`/api/v1${path}`, {
    method,
    credentials: 'same-origin',
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(method !== 'GET' && csrfToken ? { 'x-csrf-token': csrfToken } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const json = (await res.json().catch(() => ({}))) as { error?: string };
  if (!res.ok) throw new ApiError(res.status, json.error ?? `HTTP ${res.status}`);
  return json as T;
}

export interface HostView {
  name: string;
  state: 'up' | 'down';
  address: string | null;
  memoryMiB?: number;
  freeMemoryMiB?: number;
  vms: number;
  qemu?: string | null;
  cpu?: { accel: string; features: number; restriction: string | null; best: string | null } | null;
  takesNoVm?: string | null;
}

export interface VmView {
  name: string;
  host: string;
  desired: 'running' | 'stopped';
  memoryMiB: number;
  vcpus: number;
  cpuModel: string;
  ip: string | null;
  ha: { actual: string; reason: string | null } | null;
  migrating: { to: string; job: string } | null;
}

export interface RamProgress {
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  dirtyRateBytesPerSec: number;
  round: number;
  throughputBytesPerSec: number;
  expectedDowntimeMs: number;
}

export interface JobView {
  id: string;
  kind: string;
  vm: string;
  host: string;
  state: 'running' | 'succeeded' | 'failed';
  createdAt: string;
  updatedAt: string;
  progress?: { phase: string; elapsedMs: number; ram?: RamProgress; disk?: { totalBytes: number; copiedBytes: number; ready: boolean } } | null;
  log?: string[];
  error?: string;
  by?: string;
  result?: {
    outcome: string;
    totalMs: number;
    downtimeMs: number | null;
    bytes: number;
    rounds: number;
    phases: Array<{ phase: string; ms: number }>;
    steps: Array<{ atMs: number; round: number; action: { kind: string; ms?: number; initialPercent?: number }; reason: string }>;
    attempts: number;
    failure?: { phase: string; reason: string };
    clientBlackout?: { ms: number; packetsLost: number; packetsSent: number };
  };
}

export interface Candidate {
  host: string;
  ok: boolean;
  reasons: string[];
}

// The server's own types, where the UI shows them as they are.
export type { Prediction } from '../../src/migration/predict.ts';

export const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
export const seconds = (ms: number | null | undefined) => (ms === null || ms === undefined ? '—' : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);
