/**
 * Revoked certificates (ferry node remove), as this agent knows them: the store's list, read at
 * start and every 2 s. Every request is checked against it after the TLS handshake, so a removed
 * host's certificate stops working everywhere within seconds, though the CA signed it. A host that
 * finds its own certificate revoked stops taking part (agent.ts).
 */
import { X509Certificate } from 'node:crypto';
import type { ClusterState, RevokedCertificate } from '../cluster/model.ts';

const REFRESH_MS = 2_000;

/** A certificate's SHA-256 fingerprint, lower-case hex without colons (the store's key). */
export function fingerprintOf(certificate: string | { fingerprint256?: string }): string {
  const colons = typeof certificate === 'string' ? new X509Certificate(certificate).fingerprint256 : (certificate.fingerprint256 ?? '');
  return colons.replaceAll(':', '').toLowerCase();
}

export class RevocationList {
  private revoked = new Map<string, RevokedCertificate>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly state: ClusterState, private readonly log: (line: string) => void) {}

  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => void this.refresh().catch((err: Error) => this.log(`cannot read the revoked certificates (keeping the last list): ${err.message}`)), REFRESH_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async refresh(): Promise<void> {
    this.revoked = new Map((await this.state.revokedCertificates()).map((r) => [r.fingerprint, r]));
  }

  /** The revocation of this certificate, if it was revoked. */
  check(fingerprint: string): RevokedCertificate | undefined {
    return this.revoked.get(fingerprint);
  }
}
