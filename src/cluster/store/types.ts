/**
 * The state store: a revisioned key-value store with compare-and-swap
 * transactions, watches and leases — etcd's model, which the SQLite store
 * implements for one machine. Every write bumps the store's revision; a key's
 * modRevision is the fencing token for whatever that key stands for.
 */

export interface KeyValue {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  /** The lease the key is bound to (deleted when it expires), '' for none. Lease ids are opaque strings (etcd's are 64-bit). */
  lease: string;
}

/** Holds when the key's modRevision equals `modRevision`; 0 means "the key does not exist". */
export interface Compare {
  key: string;
  modRevision: number;
}

export type Op = { type: 'put'; key: string; value: string; lease?: string } | { type: 'delete'; key: string };

export interface TxnResult {
  succeeded: boolean;
  /** The store's revision after the transaction. */
  revision: number;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  value: string | null;
  modRevision: number;
}

export interface Store {
  readonly kind: 'sqlite' | 'etcd';
  get(key: string): Promise<KeyValue | undefined>;
  /** All keys starting with prefix, in key order. */
  list(prefix: string): Promise<KeyValue[]>;
  put(key: string, value: string, options?: { lease?: string }): Promise<number>;
  delete(key: string): Promise<number>;
  /** If every compare holds, apply `success`, else `failure`, atomically. */
  txn(compares: Compare[], success: Op[], failure?: Op[]): Promise<TxnResult>;
  /** Calls onEvent for every change under prefix after `afterRevision` (default: now). Returns a stop function. */
  watch(prefix: string, onEvent: (event: WatchEvent) => void, afterRevision?: number): () => void;
  grantLease(ttlSeconds: number): Promise<string>;
  /** Renews a lease; throws LeaseExpiredError when it is already gone. Returns the TTL granted again. */
  keepAlive(lease: string): Promise<number>;
  revokeLease(lease: string): Promise<void>;
  revision(): Promise<number>;
  close(): Promise<void>;
}

export class StoreError extends Error {
  override name = 'StoreError';
}

export class LeaseExpiredError extends StoreError {
  override name = 'LeaseExpiredError';
  constructor(readonly lease: string) {
    super(`lease ${lease} has expired or was revoked`);
  }
}

/** The store cannot be reached or cannot take the request now; nothing was changed by it. */
export class StoreUnavailableError extends StoreError {
  override name = 'StoreUnavailableError';
}

/**
 * etcd has no quorum: too few of its members run to agree on anything, so nothing in the cluster can
 * change. `impossibleSince` (performance.now() of this process) is set when the members themselves
 * showed that no quorum can exist: every member of the cluster either refused the connection (its
 * etcd is not running) or answered without a leader. No lease can then expire before that moment
 * plus its TTL (a leader elected later grants every lease its full TTL again), so a host need not
 * fence itself for it (agent.ts).
 */
export class StoreNoQuorumError extends StoreUnavailableError {
  override name = 'StoreNoQuorumError';
  constructor(message: string, readonly impossibleSince?: number) {
    super(message);
  }
}

/** The filesystem under the SQLite store is full: a write was refused whole (nothing of it was kept). */
export class StoreDiskFullError extends StoreUnavailableError {
  override name = 'StoreDiskFullError';
}

/** Another process held the SQLite store's write lock for longer than the busy timeout: nothing was written. */
export class StoreLockedError extends StoreUnavailableError {
  override name = 'StoreLockedError';
}
