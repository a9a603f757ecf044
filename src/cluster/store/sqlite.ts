/**
 * The embedded store: one SQLite file (WAL mode) shared by all the agents of
 * one machine. Writes take SQLite's write lock (BEGIN IMMEDIATE), so the
 * compare-and-swap is atomic across processes. Watches poll an event log;
 * leases expire by wall clock, reaped by whichever process looks first.
 */
import Database from 'better-sqlite3';
import path from 'node:path';
import { LeaseExpiredError, StoreDiskFullError, StoreLockedError, type Compare, type KeyValue, type Op, type Store, type TxnResult, type WatchEvent } from './types.ts';

interface Row {
  key: string;
  value: string;
  create_rev: number;
  mod_rev: number;
  lease: number;
}

const EVENT_LOG_KEEP = 100_000;

export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  private readonly db: Database.Database;
  private readonly watchers = new Set<{ prefix: string; after: number; onEvent: (e: WatchEvent) => void }>();
  private poller: NodeJS.Timeout | undefined;

  /** busyTimeoutMs: how long a write waits for another process's write lock before it is refused (StoreLockedError). */
  constructor(readonly path: string, private readonly busyTimeoutMs = 10_000) {
    this.db = new Database(path, { timeout: busyTimeoutMs });
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
      INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('lease', 0);
      CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0);
      CREATE TABLE IF NOT EXISTS events (rev INTEGER NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL, value TEXT);
      CREATE INDEX IF NOT EXISTS events_rev ON events (rev);
      CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires_at INTEGER NOT NULL);
    `);
  }

  async get(key: string): Promise<KeyValue | undefined> {
    return this.typed(() => {
      this.reapExpiredLeases();
      const row = this.db.prepare('SELECT * FROM kv WHERE key = ?').get(key) as Row | undefined;
      return row && toKv(row);
    });
  }

  async list(prefix: string): Promise<KeyValue[]> {
    return this.typed(() => {
      this.reapExpiredLeases();
      const rows = this.db.prepare("SELECT * FROM kv WHERE substr(key, 1, length(?)) = ? ORDER BY key").all(prefix, prefix) as Row[];
      return rows.map(toKv);
    });
  }

  async put(key: string, value: string, options: { lease?: string } = {}): Promise<number> {
    return (await this.txn([], [{ type: 'put', key, value, ...(options.lease ? { lease: options.lease } : {}) }])).revision;
  }

  async delete(key: string): Promise<number> {
    return (await this.txn([], [{ type: 'delete', key }])).revision;
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    return this.write(() => {
      const holds = compares.every((c) => {
        const row = this.db.prepare('SELECT mod_rev FROM kv WHERE key = ?').get(c.key) as { mod_rev: number } | undefined;
        return (row?.mod_rev ?? 0) === c.modRevision;
      });
      const ops = holds ? success : failure;
      let revision = this.currentRevision();
      if (ops.length) {
        revision++;
        for (const op of ops) this.apply(op, revision);
        this.db.prepare("UPDATE meta SET v = ? WHERE k = 'revision'").run(revision);
      }
      return { succeeded: holds, revision };
    });
  }

  watch(prefix: string, onEvent: (event: WatchEvent) => void, afterRevision?: number): () => void {
    const watcher = { prefix, after: afterRevision ?? this.currentRevision(), onEvent };
    this.watchers.add(watcher);
    this.poller ??= setInterval(() => this.pollWatchers(), 50);
    return () => {
      this.watchers.delete(watcher);
      if (!this.watchers.size && this.poller) {
        clearInterval(this.poller);
        this.poller = undefined;
      }
    };
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    return this.write(() => {
      const id = (this.db.prepare("SELECT v FROM meta WHERE k = 'lease'").get() as { v: number }).v + 1;
      this.db.prepare("UPDATE meta SET v = ? WHERE k = 'lease'").run(id);
      this.db.prepare('INSERT INTO leases VALUES (?, ?, ?)').run(id, ttlSeconds, Date.now() + ttlSeconds * 1000);
      return String(id);
    });
  }

  async keepAlive(lease: string): Promise<number> {
    this.typed(() => this.reapExpiredLeases());
    return this.write(() => {
      const row = this.db.prepare('SELECT ttl FROM leases WHERE id = ?').get(lease) as { ttl: number } | undefined;
      if (!row) throw new LeaseExpiredError(lease);
      this.db.prepare('UPDATE leases SET expires_at = ? WHERE id = ?').run(Date.now() + row.ttl * 1000, lease);
      return row.ttl;
    });
  }

  async revokeLease(lease: string): Promise<void> {
    this.write(() => this.dropLeases([Number(lease)]));
  }

  async revision(): Promise<number> {
    return this.typed(() => this.currentRevision());
  }

  async close(): Promise<void> {
    if (this.poller) clearInterval(this.poller);
    this.watchers.clear();
    this.db.close();
  }

  private currentRevision(): number {
    return (this.db.prepare("SELECT v FROM meta WHERE k = 'revision'").get() as { v: number }).v;
  }

  private apply(op: Op, revision: number): void {
    if (op.type === 'put') {
      if (op.lease && !this.db.prepare('SELECT 1 FROM leases WHERE id = ?').get(op.lease)) throw new LeaseExpiredError(op.lease);
      this.db
        .prepare(
          `INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, lease = excluded.lease`,
        )
        .run(op.key, op.value, revision, revision, op.lease ? Number(op.lease) : 0);
      this.db.prepare('INSERT INTO events VALUES (?, ?, ?, ?)').run(revision, op.key, 'put', op.value);
    } else if (this.db.prepare('DELETE FROM kv WHERE key = ?').run(op.key).changes) {
      this.db.prepare('INSERT INTO events VALUES (?, ?, ?, NULL)').run(revision, op.key, 'delete');
    }
  }

  /**
   * Runs fn in a write transaction that holds SQLite's lock from the start (no lost updates between
   * processes). A transaction that fails is rolled back whole (better-sqlite3 does, if SQLite has not).
   */
  private write<T>(fn: () => T): T {
    return this.typed(() => this.db.transaction(fn).immediate());
  }

  /** SQLite's refusals for a full filesystem or a lock held too long, as the store's typed errors that say what to do. */
  private typed<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      const code = String((err as { code?: unknown }).code ?? '');
      if (code.startsWith('SQLITE_FULL'))
        throw new StoreDiskFullError(`the store's database ${this.path} cannot grow: its filesystem is full (${code}); nothing of this change was written. Free space there (df ${path.dirname(this.path)}), then try again`);
      if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))
        throw new StoreLockedError(
          `the store's database ${this.path} is locked: another process held it for more than ${this.busyTimeoutMs / 1000} s (${code}); nothing of this change was written. ` +
            `Find what holds it (fuser ${this.path}) and let it finish or end it, then try again`,
        );
      throw err;
    }
  }

  private reapExpiredLeases(): void {
    const expired = this.db.prepare('SELECT id FROM leases WHERE expires_at < ?').all(Date.now()) as { id: number }[];
    if (expired.length) this.write(() => this.dropLeases(expired.map((e) => e.id)));
  }

  private dropLeases(ids: number[]): void {
    for (const id of ids) {
      const keys = this.db.prepare('SELECT key FROM kv WHERE lease = ?').all(id) as { key: string }[];
      if (keys.length) {
        const revision = this.currentRevision() + 1;
        for (const { key } of keys) this.apply({ type: 'delete', key }, revision);
        this.db.prepare("UPDATE meta SET v = ? WHERE k = 'revision'").run(revision);
      }
      this.db.prepare('DELETE FROM leases WHERE id = ?').run(id);
    }
    this.db.prepare('DELETE FROM events WHERE rev < ?').run(this.currentRevision() - EVENT_LOG_KEEP);
  }

  private pollWatchers(): void {
    try {
      this.reapExpiredLeases();
      for (const w of this.watchers) {
        const rows = this.db
          .prepare('SELECT * FROM events WHERE rev > ? AND substr(key, 1, length(?)) = ? ORDER BY rev')
          .all(w.after, w.prefix, w.prefix) as { rev: number; key: string; type: 'put' | 'delete'; value: string | null }[];
        for (const r of rows) {
          w.after = r.rev;
          w.onEvent({ type: r.type, key: r.key, value: r.value, modRevision: r.rev });
        }
      }
    } catch {
      /* database busy or closing: the next tick retries */
    }
  }
}

function toKv(row: Row): KeyValue {
  return { key: row.key, value: row.value, createRevision: row.create_rev, modRevision: row.mod_rev, lease: row.lease ? String(row.lease) : '' };
}
