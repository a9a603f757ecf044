/**
 * What a request may carry, checked before anything acts on it: a migration's parameters are the
 * known ones, of their types and in their ranges (a progress interval of 0 would poll QEMU in a
 * busy loop). A bad request changes nothing and says what was wrong.
 */
import { POLICY_NAMES } from '../migration/policy/policy.ts';
import type { MigrationParams } from '../migration/types.ts';
import { RefusedError } from './errors.ts';
import { quoted } from './request-schema.ts';

type Check = (value: unknown) => string | undefined;

const whole = (min: number, max: number): Check => (v) => (Number.isInteger(v) && (v as number) >= min && (v as number) <= max ? undefined : `a whole number from ${min} to ${max}`);
const bool: Check = (v) => (typeof v === 'boolean' ? undefined : 'true or false');
const oneOf = (choices: readonly string[]): Check => (v) => (typeof v === 'string' && choices.includes(v) ? undefined : `one of ${choices.join(', ')}`);

const PARAMS: Record<keyof MigrationParams, Check> = {
  policy: oneOf(POLICY_NAMES),
  maxBandwidth: (v) => (v === 'unlimited' ? undefined : whole(1, 2 ** 50)(v) && "a number of bytes per second, or 'unlimited'"),
  downtimeLimitMs: whole(1, 600_000),
  performTimeoutMs: whole(1000, 24 * 3600_000),
  allowPostcopy: bool,
  progressIntervalMs: whole(50, 10_000),
  verifyMemory: oneOf(['always', 'never', 'auto']),
  multifd: bool,
  postcopyPreempt: bool,
  allowOlderDestination: bool,
};

export function migrationParams(value: unknown): Partial<MigrationParams> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RefusedError('params must be an object of migration parameters');
  for (const [key, v] of Object.entries(value)) {
    const check = PARAMS[key as keyof MigrationParams];
    if (!check) throw new RefusedError(`unknown migration parameter '${key}'; known: ${Object.keys(PARAMS).join(', ')}`);
    const wrong = check(v);
    if (wrong) throw new RefusedError(`migration parameter ${key}=${quoted(v)}: must be ${wrong}`);
  }
  return value as Partial<MigrationParams>;
}
