/**
 * What an agent route takes, as JSON schemas that server.ts checks before the route's handler runs:
 * its path parameters, and its JSON body (or, for a route that reads its body as a stream, its
 * query). A request that does not match is refused with a 400 naming the field and what is wrong
 * with it; nothing acts on it. Handlers keep the checks a schema cannot make (does the VM exist,
 * is the address free, is the range of one field tied to another's).
 *
 * The fields below are the vocabulary route modules build their schemas from; a field's
 * `description` is what a refusal says it must be ("path/vm: \"A/B\" is not a VM name (...)").
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { JOB_ID_PATTERN, MOVE_JOB_ID_PATTERN, nameSchema } from '../util/names.ts';
import { ApiError } from './errors.ts';

export type Schema = { readonly [keyword: string]: unknown };
export type ObjectSchema = Schema & { readonly type: 'object' };

/** A request whose path, body or query does not match its route's schema. */
export class InvalidRequestError extends ApiError {
  override name = 'InvalidRequestError';
  constructor(message: string) {
    super(400, message);
  }
}

/** An object of exactly these fields; `required` must be there. */
export function fields(properties: Record<string, Schema>, required: readonly string[] = []): ObjectSchema {
  return { type: 'object', properties, required, additionalProperties: false };
}

/** Nothing: a route without path parameters, or whose body is empty (`{}` or no body at all). */
export const NOTHING = fields({});

/** Path parameters (every one is in the route's pattern, so every one is required). */
export function pathParams(properties: Record<string, Schema>): ObjectSchema {
  return fields(properties, Object.keys(properties));
}

export const VM = nameSchema('a VM name');
export const HOST = nameSchema('a host name');
export const POOL = nameSchema('a storage pool name');
export const VOLUME = nameSchema('a volume name');
export const IMAGE = nameSchema('an image name');
export const NETWORK = nameSchema('a network name');
export const RULE = nameSchema('an HA rule name');
export const USER = nameSchema('a user name');

export const JOB_ID = { type: 'string', pattern: JOB_ID_PATTERN.source, description: 'a job id like 20261130120000-1a2b3c4d (ferry job list)' } as const;
export const MOVE_JOB_ID = { type: 'string', pattern: MOVE_JOB_ID_PATTERN.source, description: 'a drain, return or balance job id like drain-h1-1a2b3c4d (ferry job list)' } as const;
/** An incoming migration's id: the UUID its source host gave it. */
export const MIGRATION_ID = { type: 'string', pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', description: "a migration id (a UUID)" } as const;
/** A VM's fencing token: its record's revision in the store. */
export const TOKEN = { type: 'integer', minimum: 0, description: "a VM's fencing token (a whole number: ferry vm show)" } as const;
export const BOOLEAN = { type: 'boolean', description: 'true or false' } as const;

/** A whole number in a range. */
export function whole(minimum: number, maximum: number, description = `a whole number from ${minimum} to ${maximum}`): Schema {
  return { type: 'integer', minimum, maximum, description };
}

/** Text of at most `maxLength` characters (free text: a reason, a label, a password). */
export function text(maxLength: number, description = `text of at most ${maxLength} characters`): Schema {
  return { type: 'string', maxLength, description };
}

/** One of a few words. */
export function oneOf(values: readonly string[], description = `one of ${values.join(', ')}`): Schema {
  return { type: 'string', enum: values, description };
}

export function listOf(items: Schema, maxItems: number, description?: string): Schema {
  return { type: 'array', items, maxItems, ...(description ? { description } : {}) };
}

/** What a route declares: its path parameters, and its JSON body — or its query, for a route that streams its body. */
export type JsonInput = { params: ObjectSchema; body: ObjectSchema };
export type StreamInput = { params: ObjectSchema; query: ObjectSchema };

const ajv = new Ajv({ allErrors: false, verbose: true, strict: true, allowUnionTypes: true, coerceTypes: false, useDefaults: false, removeAdditional: false });

/** The check of one part of a request; throws an InvalidRequestError that names the first thing wrong. */
export type PartCheck = (value: unknown) => void;

export function compilePart(part: 'path' | 'body' | 'query', schema: ObjectSchema): PartCheck {
  const validate: ValidateFunction = ajv.compile(schema);
  return (value) => {
    // The last error is the outermost: an anyOf's own after those of its branches.
    if (!validate(value)) throw new InvalidRequestError(describeError(part, validate.errors?.at(-1)));
  };
}

/**
 * A value as a refusal quotes it: JSON, short, with control characters escaped. A value nested
 * deeper than JSON.stringify goes (a few thousand levels; JSON.parse takes any depth) is named, not quoted.
 */
export function quoted(value: unknown): string {
  let json: string;
  try {
    json = JSON.stringify(value) ?? String(value);
  } catch {
    return Array.isArray(value) ? 'an array nested too deep to show' : `an ${typeof value} nested too deep to show`;
  }
  return json.length > 60 ? `${json.slice(0, 57)}…` : json;
}

function describeError(part: string, error: ErrorObject | undefined): string {
  if (!error) return `the request's ${part} is not valid`;
  const where = `${part}${error.instancePath}`;
  const parent = (error.parentSchema ?? {}) as { description?: string; properties?: Record<string, { description?: string }> };
  switch (error.keyword) {
    case 'required': {
      const field = (error.params as { missingProperty: string }).missingProperty;
      const what = parent.properties?.[field]?.description;
      return `${where}/${field} is missing${what ? ` (${what})` : ''}`;
    }
    case 'additionalProperties': {
      const known = Object.keys(parent.properties ?? {});
      const field = quoted((error.params as { additionalProperty: string }).additionalProperty);
      return `${where}: ${field} is not a field of this request (${known.length ? `it takes ${known.join(', ')}` : 'it takes none'})`;
    }
  }
  if (error.instancePath === '' && error.keyword === 'type') return `the request's ${part} must be a JSON object`;
  if (parent.description) return `${where}: ${quoted(error.data)} is not ${parent.description}`;
  if (error.keyword === 'enum') return `${where}: ${quoted(error.data)} is not one of ${(error.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
  return `${where} ${error.message ?? 'is not valid'}`;
}

/** A route that takes nothing: no path parameters, an empty body. */
export const NO_INPUT: JsonInput = { params: NOTHING, body: NOTHING };

/** A route that takes only path parameters (its body empty). */
export function pathOnly(properties: Record<string, Schema>): JsonInput {
  return { params: pathParams(properties), body: NOTHING };
}
