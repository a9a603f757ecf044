/** One `ferry` command: what `ferry --help` lists, its usage, and what it does. */
export interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<number | void>;
}
