/** Errors raised while talking to or running QEMU. Each says what went wrong and what to do. */

export class QemuError extends Error {
  override name = 'QemuError';
}

/** QEMU answered a QMP command with an error object. */
export class QmpCommandError extends QemuError {
  override name = 'QmpCommandError';
  constructor(
    readonly command: string,
    /** QEMU's error class, e.g. "GenericError", "CommandNotFound", "DeviceNotFound". */
    readonly errorClass: string,
    /** QEMU's own description of the error. */
    readonly description: string,
  ) {
    super(`QMP command '${command}' failed: ${description} (${errorClass})`);
  }
}

/** The QMP connection closed or broke (QEMU exited, crashed, or closed the socket). */
export class QmpConnectionClosedError extends QemuError {
  override name = 'QmpConnectionClosedError';
  constructor(readonly socketPath: string, detail: string) {
    super(`QMP connection to ${socketPath} is closed (${detail}); QEMU has probably exited — check its log`);
  }
}

/** A QMP command got no answer in time. The connection stays usable. */
export class QmpTimeoutError extends QemuError {
  override name = 'QmpTimeoutError';
  constructor(readonly command: string, readonly timeoutMs: number) {
    super(`QMP command '${command}' got no answer within ${timeoutMs} ms; QEMU may be hung or overloaded`);
  }
}

/** The peer on the socket did not speak QMP as expected (bad greeting, unparsable line). */
export class QmpProtocolError extends QemuError {
  override name = 'QmpProtocolError';
}

/** A QEMU process could not be started or did not come up. */
export class QemuStartError extends QemuError {
  override name = 'QemuStartError';
  constructor(message: string, readonly stderr = '') {
    super(stderr ? `${message}\nQEMU said: ${stderr.trim().split('\n').slice(-5).join('\n')}` : message);
  }
}

/** QEMU's `enforce` refused the VM's CPU model: this host cannot give it every feature the model has. */
export class CpuModelRefusedError extends QemuStartError {
  override name = 'CpuModelRefusedError';
  constructor(readonly model: string, readonly features: string[], stderr: string) {
    super(`this host cannot run CPU model '${model}': it lacks ${features.join(', ')} (QEMU refused it with enforce rather than drop them); choose a model every host runs ('ferry cluster cpu')`, stderr);
  }
}

/** The guest did not print its ready line in time. */
export class GuestBootTimeoutError extends QemuError {
  override name = 'GuestBootTimeoutError';
  constructor(readonly vmName: string, readonly accel: string, readonly timeoutMs: number) {
    super(
      `guest '${vmName}' did not report ready within ${Math.round(timeoutMs / 1000)} s under accel=${accel}` +
        (accel === 'kvm'
          ? '; Linux guests are known to hang under KVM on some hosts — run it with accel=tcg (or accel=auto, which tests KVM first)'
          : '; check the serial log for where it stopped'),
    );
  }
}

/** A VM spec that cannot be run, with the field at fault. */
export class InvalidVmSpecError extends QemuError {
  override name = 'InvalidVmSpecError';
  constructor(readonly field: string, problem: string) {
    super(`invalid VM spec: ${field} ${problem}`);
  }
}
