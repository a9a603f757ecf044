/**
 * One grammar for the names that reach certificate subjects, file paths, QEMU options and store
 * keys (hosts, VMs, volumes, pools, images, networks, HA rules, API users): lower-case letters,
 * digits and '-', starting with a letter, at most 63 characters — a DNS label. Nothing in it can
 * split a comma-separated QEMU option, climb a path, or add an attribute to a certificate's subject.
 * The README's "Names" section says the same to users; the agent's and the REST API's request
 * schemas take their name fields from nameSchema() below.
 */
export const NAME_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

export const NAME_RULE = "start with a letter and use only a-z, 0-9 and '-' (at most 63 characters)";

/** A JSON schema of a name; `what` says which ('a VM name') in a refusal's message and the OpenAPI document. */
export function nameSchema(what = 'a name') {
  return { type: 'string', pattern: NAME_PATTERN.source, maxLength: 63, description: `${what}: names ${NAME_RULE}` } as const;
}

/** A job's id (cluster/model.ts newJob): its creation time to the second, then 8 hex digits. */
export const JOB_ID_PATTERN = /^[0-9]{14}-[0-9a-f]{8}$/;

/** A move job's id (cluster/moves): drain, return or balance, the host (or 'cluster'), 8 hex digits. */
export const MOVE_JOB_ID_PATTERN = /^(drain|return|balance)-[a-z0-9-]{1,80}$/;
