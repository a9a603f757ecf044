/**
 * One grammar for the names that reach certificate subjects, file paths, QEMU options and store
 * keys (hosts, VMs, volumes, pools): lower-case letters, digits and '-', starting with a letter, at
 * most 63 characters — a DNS label. Nothing in it can split a comma-separated QEMU option, climb a
 * path, or add an attribute to a certificate's subject.
 */
export const NAME_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

export const NAME_RULE = "start with a letter and use only a-z, 0-9 and '-' (at most 63 characters)";
