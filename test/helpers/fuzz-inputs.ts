/**
 * Hostile inputs for the agent's routes, derived from the routes' own schemas (GET /v1/routes):
 * every request made here is invalid by construction — a path parameter, a body field or a query
 * field is broken, or the body is no JSON object at all — and is checked against the route's schema
 * before it is sent, so that no generated request can be one the agent would act on.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import fc from 'fast-check';

export type Schema = {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean;
  items?: Schema;
  maxItems?: number;
  pattern?: string;
  enum?: string[];
  const?: unknown;
  anyOf?: Schema[];
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  maxLength?: number;
};

export interface RouteInput {
  method: 'GET' | 'POST' | 'DELETE';
  pattern: string;
  who: 'admin' | 'host' | 'admin-or-host' | 'operator';
  input: { params: Schema; body?: Schema; query?: Schema };
}

/** One request: its path (already encoded), its body's bytes, and why it must be refused. */
export interface FuzzRequest {
  path: string;
  body?: string;
  broken: 'path' | 'body' | 'query' | 'json' | 'not-an-object';
}

const ajv = new Ajv({ allErrors: false, strict: false, allowUnionTypes: true });
const validators = new WeakMap<Schema, ValidateFunction>();
/** Whether the agent's schema accepts `value` (the same checks as server.ts makes). */
export function accepts(schema: Schema, value: unknown): boolean {
  let validate = validators.get(schema);
  if (!validate) validators.set(schema, (validate = ajv.compile(schema)));
  return validate(value) as boolean;
}

/** Names and strings an attacker tries: separators, traversal, NUL, control characters, other scripts, 10,000 characters. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    'a/b', '..', '.', '../../etc/passwd', 'a/../b', 'a\u0000b', '\u0000', 'a\nb', 'a\rb', '\u001b[31mred', '\u007f', 'A', 'Web 1', 'web_1', 'é', '名前', '🙂', '\u202eevil',
    '-a', '1a', '', ' ', 'a'.repeat(64), 'a,b=c', 'a;b', '$(id)', '`id`', '\\', '%2F', '%00', 'x'.repeat(10_000), '\ud800', 'a\u2028b', '<script>', "'; DROP TABLE kv; --",
  ),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.string({ unit: 'binary-ascii', maxLength: 40 }),
  fc.tuple(fc.constantFrom('a', '/', '\u0000', '.', 'é'), fc.integer({ min: 1000, max: 12_000 })).map(([c, n]) => c.repeat(n)),
);

/** Any JSON value, hostile ones often. */
export const hostileJson: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.constantFrom(0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 2, -0, true, false, null, [], {}, [null], { a: 1 }) },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.double({ noNaN: true }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);

/** Field names nobody declared, the prototype's among them. */
const strangeKey: fc.Arbitrary<string> = fc.oneof(fc.constantFrom('__proto__', 'constructor', 'prototype', 'extra', '', 'a\u0000b', 'x'.repeat(300)), fc.string({ unit: 'binary', maxLength: 12 }));

/** A value the schema takes (used for the fields that are not the broken one). */
export function validValue(schema: Schema): fc.Arbitrary<unknown> {
  if (schema.anyOf) return fc.oneof(...schema.anyOf.map(validValue));
  if (schema.const !== undefined) return fc.constant(schema.const);
  if (schema.enum) return fc.constantFrom(...schema.enum);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'string':
      if (schema.pattern) return fc.stringMatching(new RegExp(schema.pattern)).filter((s) => s.length <= (schema.maxLength ?? Infinity));
      return fc.string({ maxLength: Math.min(schema.maxLength ?? 20, 20) });
    case 'integer': {
      const step = schema.multipleOf ?? 1;
      const min = Math.ceil((schema.minimum ?? 0) / step);
      const max = Math.floor(Math.min(schema.maximum ?? 1000, min * step + 1_000_000) / step);
      return fc.integer({ min, max }).map((n) => n * step);
    }
    case 'boolean':
      return fc.boolean();
    case 'array':
      return fc.array(validValue(schema.items ?? {}), { maxLength: Math.min(schema.maxItems ?? 3, 3) });
    case 'object':
      return validObject(schema);
    default:
      return fc.constant(null);
  }
}

function validObject(schema: Schema): fc.Arbitrary<Record<string, unknown>> {
  const properties = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const entries = Object.entries(properties).map(([key, s]) => (required.has(key) ? validValue(s) : fc.option(validValue(s), { nil: undefined, freq: 2 })).map((v) => [key, v] as const));
  if (!entries.length) return fc.constant({});
  return fc.tuple(...entries).map((pairs) => Object.fromEntries(pairs.filter(([, v]) => v !== undefined)));
}

/**
 * An object that breaks `schema` in one place at least: a field set to a hostile value, a
 * required field left out, or a field nobody declared added.
 */
export function brokenObject(schema: Schema): fc.Arbitrary<Record<string, unknown>> {
  const keys = Object.keys(schema.properties ?? {});
  const mutation = fc.oneof(
    ...(keys.length ? [fc.tuple(fc.constant('set' as const), fc.constantFrom(...keys), hostileJson)] : []),
    ...(schema.required?.length ? [fc.tuple(fc.constant('drop' as const), fc.constantFrom(...schema.required), fc.constant(undefined))] : []),
    fc.tuple(fc.constant('add' as const), strangeKey, hostileJson),
  );
  return fc
    .tuple(validObject(schema), fc.array(mutation, { minLength: 1, maxLength: 3 }))
    .map(([base, mutations]) => {
      const object: Record<string, unknown> = { ...base };
      for (const [kind, key, value] of mutations) {
        if (kind === 'drop') delete object[key];
        else Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true }); // '__proto__' too, as an own field
      }
      return object;
    })
    .filter((object) => !accepts(schema, JSON.parse(JSON.stringify(object))));
}

/** Text that is not JSON. */
const notJson: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('{', '{"a":', '[1,2', "{'a':1}", '{"a":1,}', 'undefined', 'NaN', '{"a":01}', '\u0000', '{"a":"\\u00"}', '\ufeff{}x', '{}{}', '{"a":1}]', '--', '{"a":Infinity}'),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 60 }).filter((s) => s.trim() !== '' && !parses(s)),
);

function parses(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** JSON that is not an object. */
const notAnObject: fc.Arbitrary<string> = fc.oneof(fc.constantFrom('[]', '[{}]', 'null', '0', '-1', '"x"', 'true', 'false', '1e999'), fc.array(hostileJson, { maxLength: 3 }).map((a) => JSON.stringify(a)));

/** A value percent-encoded (a lone surrogate, which UTF-8 cannot carry, as U+FFFD: percentGarbage sends its raw bytes). */
function encoded(value: string): string {
  return encodeURIComponent(value.replace(/[\ud800-\udfff]/gu, '\ufffd'));
}

/** Raw percent-encoding garbage for a path segment or a query. */
const percentGarbage: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('%', '%%', '%zz', '%0', '%C0%AF', '%E0%A4%A', '%FF', '%ED%A0%80', '%00', '%2e%2e', '%2E', '..%2f..', 'a%2Fb', '%u0041', '%25', '%%32%65'),
  fc.stringMatching(/^(%[0-9A-Fa-fgz]{0,2}|[a-z.]){1,12}$/),
);

function decoded(raw: string): string | undefined {
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

/** The path with each parameter's segment put in. */
function fill(pattern: string, segments: Record<string, string>): string {
  return pattern.replace(/:(\w+)/g, (_, name: string) => segments[name]!);
}

export function paramNames(pattern: string): string[] {
  return [...pattern.matchAll(/:(\w+)/g)].map((m) => m[1]!);
}

/** A request whose path carries one broken parameter (the others valid): refused before its body matters. */
export function brokenPath(route: RouteInput): fc.Arbitrary<FuzzRequest> {
  const names = paramNames(route.pattern);
  const properties = route.input.params.properties ?? {};
  return fc
    .tuple(
      fc.constantFrom(...names),
      fc.oneof(hostileString.map(encoded), percentGarbage),
      fc.tuple(...names.map((n) => validValue(properties[n]!).map((v) => encoded(String(v))))),
      fc.oneof(fc.constant(undefined), notJson, fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v))),
    )
    .map(([broken, raw, valid, body]) => {
      const segments = Object.fromEntries(names.map((n, i) => [n, n === broken ? raw : valid[i]!]));
      return { path: fill(route.pattern, segments), ...(body !== undefined ? { body } : {}), broken: 'path' as const, param: broken, raw };
    })
    .filter(({ param, raw }) => raw !== '' && !accepts(properties[param]!, decoded(raw) ?? '\u0000'));
}

/** Valid path parameters (nothing of the cluster has these names: the body is what is broken). */
function validPath(route: RouteInput): fc.Arbitrary<string> {
  const names = paramNames(route.pattern);
  const properties = route.input.params.properties ?? {};
  if (!names.length) return fc.constant(route.pattern);
  return fc.tuple(...names.map((n) => validValue(properties[n]!))).map((values) => fill(route.pattern, Object.fromEntries(names.map((n, i) => [n, encoded(String(values[i]))]))));
}

/**
 * An object with one field nested thousands deep (as text: JSON.stringify itself gives up past a
 * few thousand levels, JSON.parse does not).
 */
function deepField(schema: Schema): fc.Arbitrary<string> {
  const keys = Object.keys(schema.properties ?? {});
  return fc
    .tuple(fc.constantFrom(...(keys.length ? keys : ['extra'])), fc.integer({ min: 5_000, max: 100_000 }), fc.boolean())
    .map(([key, depth, arrays]) => `{${JSON.stringify(key)}:${arrays ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth)}}`)
    .filter((text) => !accepts(schema, JSON.parse(text)));
}

/** A JSON route's request with a broken body. */
export function brokenBody(route: RouteInput): fc.Arbitrary<FuzzRequest> {
  const schema = route.input.body!;
  return fc.tuple(
    validPath(route),
    fc.oneof(
      { weight: 4, arbitrary: brokenObject(schema).map((o) => ({ body: JSON.stringify(o), broken: 'body' as const })) },
      { weight: 1, arbitrary: notAnObject.map((body) => ({ body, broken: 'not-an-object' as const })) },
      { weight: 1, arbitrary: notJson.map((body) => ({ body, broken: 'json' as const })) },
      { weight: 1, arbitrary: deepField(schema).map((body) => ({ body, broken: 'body' as const })) },
    ),
  ).map(([path, b]) => ({ path, ...b }));
}

function queryString(pairs: Array<[string, string]>): string {
  return pairs.map(([k, v]) => `${encoded(k)}=${encoded(v)}`).join('&');
}

/** A stream route's request with a broken query (a field broken, one unknown, or one given twice). */
export function brokenQuery(route: RouteInput): fc.Arbitrary<FuzzRequest> {
  const schema = route.input.query!;
  const query = fc.oneof(
    brokenObject(schema).map((o) => queryString(Object.entries(o).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]))),
    fc.tuple(validObject(schema), fc.constantFrom(...(Object.keys(schema.properties ?? {}).length ? Object.keys(schema.properties ?? {}) : ['extra']))).map(([o, twice]) => `${queryString(Object.entries(o).map(([k, v]) => [k, String(v)]))}&${twice}=a&${twice}=b`),
    percentGarbage.map((g) => `${g}=${g}`),
  );
  return fc
    .tuple(validPath(route), query, fc.uint8Array({ maxLength: 64 }))
    .map(([path, q, bytes]) => ({ path: `${path}?${q}`, body: Buffer.from(bytes).toString('latin1'), broken: 'query' as const }))
    .filter(({ path }) => {
      const search = new URL(path, 'https://agent').searchParams;
      const keys = [...search.keys()];
      return new Set(keys).size !== keys.length || !accepts(schema, Object.fromEntries(search));
    });
}
