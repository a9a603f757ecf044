import type { MigrationPhase, MigrationRecord } from './types.ts';

export class MigrationError extends Error {
  override name = 'MigrationError';
}

/** Refused in 'begin': nothing was started, nothing changed. */
export class MigrationRefusedError extends MigrationError {
  override name = 'MigrationRefusedError';
  constructor(readonly vm: string, readonly problems: string[]) {
    super(`migration of '${vm}' refused, nothing was changed:\n  - ${problems.join('\n  - ')}`);
  }
}

/** Failed before switchover and rolled back: the VM runs on the source, the destination is gone. */
export class MigrationRolledBackError extends MigrationError {
  override name = 'MigrationRolledBackError';
  constructor(readonly record: MigrationRecord) {
    super(
      `migration of '${record.vm}' failed in ${record.failure?.phase}: ${record.failure?.reason}; ` +
        'the VM is still running on the source and the destination was cleaned up',
    );
  }
}

/** The source QEMU itself died: there is nothing to roll back to. */
export class SourceLostError extends MigrationError {
  override name = 'SourceLostError';
  constructor(readonly vm: string, readonly phase: MigrationPhase, detail: string) {
    super(`the source QEMU of '${vm}' exited during ${phase} (${detail}); the VM is not running anywhere — start it again`);
  }
}

/** QEMU has not ended its migration stream yet; the rollback finishes in the background once it does. */
export class CancelPendingError extends MigrationError {
  override name = 'CancelPendingError';
}

/** The rollback could not bring the source back (yet): its QEMU lives, but has not left the migration or resumed. */
export class RollbackIncompleteError extends MigrationError {
  override name = 'RollbackIncompleteError';
  constructor(readonly vm: string, readonly phase: MigrationPhase, detail: string, pending: boolean) {
    super(
      `migration of '${vm}' failed in ${phase} and its rollback is not complete (${detail}); the VM stays on the source, ` +
        (pending
          ? `where its guest keeps running (unless the stream was in its final pause); the agent's log says when the rollback finished`
          : `whose QEMU may be paused: see 'ferry vm show ${vm}', and 'ferry vm stop --force' then 'ferry vm start' if its guest does not answer`),
    );
  }
}

/** Raised inside the engine to stop a phase; turned into a rollback. */
export class PhaseFailure extends MigrationError {
  override name = 'PhaseFailure';
  constructor(readonly phase: MigrationPhase, reason: string) {
    super(reason);
  }
}

/** The memory check found pages the stream lost: nothing switched over, and the same migration may succeed when tried again. */
export class LostPagesError extends PhaseFailure {
  override name = 'LostPagesError';
  constructor(reason: string) {
    super('switchover', reason);
  }
}

export class MigrationCancelledError extends MigrationError {
  override name = 'MigrationCancelledError';
  constructor() {
    super('cancelled by the user');
  }
}
