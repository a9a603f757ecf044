/** Errors the agent API reports, each with the HTTP status it is sent with. */

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export class NotFoundError extends ApiError {
  override name = 'NotFoundError';
  constructor(message: string) {
    super(404, message);
  }
}

/** The request carried a fencing token older than the store's: someone else changed the VM since. */
export class StaleTokenError extends ApiError {
  override name = 'StaleTokenError';
  constructor(vm: string, given: number, current: number | undefined) {
    // The current token is not repeated to a caller that did not know it: it is what guards the VM.
    super(409, `stale fencing token for '${vm}': the request carries ${given}, ${current === undefined ? 'the store has no record of it' : 'the store has a newer one'}; re-read the VM and try again`);
  }
}

/** The request makes sense but cannot be done now (no room, wrong state...). Nothing was changed. */
export class RefusedError extends ApiError {
  override name = 'RefusedError';
  constructor(message: string) {
    super(422, message);
  }
}
