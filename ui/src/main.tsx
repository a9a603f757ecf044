/**
 * ferry's web UI: the cluster at a glance, a VM's page with its migrate dialog (each host marked can
 * or cannot, with why; the dry run's prediction per policy) and its migration followed live (a chart
 * of bytes sent and left and the dirty rate, the phase, an ETA, Cancel), the record of each past
 * migration, and the jobs. Everything comes from the REST API; live changes from its event stream.
 */
import { StrictMode, useCallback, useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { api, ApiError, mib, rememberSession, seconds, type Candidate, type HostView, type JobView, type Prediction, type Session, type VmView } from './api.ts';
import { NAME_PATTERN } from '../../src/util/names.ts';

type Route = { page: 'overview' } | { page: 'vm'; name: string } | { page: 'host'; name: string } | { page: 'jobs' };

/** A VM's or host's name as the cluster spells them; anything else in the URL is no page. */
const NAME = NAME_PATTERN;

function routeOf(hash: string): Route {
  const [, page, raw] = hash.replace(/^#\/?/, '/').split('/');
  const name = raw && NAME.test(raw) ? raw : undefined;
  if (page === 'vm' && name) return { page: 'vm', name };
  if (page === 'host' && name) return { page: 'host', name };
  if (page === 'jobs') return { page: 'jobs' };
  return { page: 'overview' };
}

type EventListener = (kind: string, data: Record<string, unknown>) => void;
const listeners = new Set<EventListener>();
let source: EventSource | undefined;

function openEvents(): void {
  const opened = new EventSource('/api/v1/events');
  source = opened;
  for (const kind of ['job', 'vm', 'ready']) opened.addEventListener(kind, (e) => listeners.forEach((l) => l(kind, JSON.parse((e as MessageEvent<string>).data) as Record<string, unknown>)));
  // Closed for good (the server ended it, or refused it): opened again in a while, while a page listens.
  opened.addEventListener('end', () => opened.close());
  opened.onerror = () => {
    if (opened.readyState !== EventSource.CLOSED && source === opened) return; // the browser reconnects by itself
    opened.close();
    if (source === opened) source = undefined;
    setTimeout(() => listeners.size && !source && openEvents(), 3000);
  };
}

/** Calls `onEvent` for every event of the API's stream while mounted; one stream for the whole page. */
function useEvents(onEvent: EventListener): void {
  const handler = useRef(onEvent);
  handler.current = onEvent;
  useEffect(() => {
    const listener: EventListener = (kind, data) => handler.current(kind, data);
    listeners.add(listener);
    if (!source) openEvents();
    return () => {
      listeners.delete(listener);
      if (!listeners.size) (source?.close(), (source = undefined));
    };
  }, []);
}

/** `fn`, at most once a second (a migration's progress events come twice a second). */
function useThrottled(fn: () => void): () => void {
  const last = useRef(0);
  const pending = useRef<ReturnType<typeof setTimeout>>(undefined);
  return useCallback(() => {
    const wait = 1000 - (Date.now() - last.current);
    if (pending.current) return;
    pending.current = setTimeout(() => ((pending.current = undefined), (last.current = Date.now()), fn()), Math.max(0, wait));
  }, [fn]);
}

function useLoad<T>(load: () => Promise<T>, deps: unknown[]): { data: T | undefined; error: string | undefined; reload: () => void } {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const reload = useCallback(() => {
    load().then(
      (d) => (setData(d), setError(undefined)),
      (e: Error) => setError(e.message),
    );
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  useEffect(reload, [reload]);
  return { data, error, reload };
}

function Login({ onLogin }: { onLogin: (s: Session) => void }) {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string>();
  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    try {
      onLogin(await api<Session>('POST', '/session', { user, password }));
    } catch (err) {
      setError((err as Error).message);
    }
  };
  return (
    <form className="login" onSubmit={submit}>
      <h1>ferry</h1>
      <label>
        User <input name="user" autoComplete="username" value={user} onChange={(e) => setUser(e.target.value)} />
      </label>
      <label>
        Password <input name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} />
      </label>
      <button type="submit">Log in</button>
      {error && <p className="error">{error}</p>}
    </form>
  );
}

function Overview() {
  const hosts = useLoad(() => api<{ hosts: HostView[] }>('GET', '/hosts'), []);
  const vms = useLoad(() => api<{ vms: VmView[] }>('GET', '/vms'), []);
  const storage = useLoad(() => api<{ pools: Array<{ name: string; type: string; location: string; reachedFrom: string }> }>('GET', '/storage'), []);
  const refresh = useThrottled(useCallback(() => (hosts.reload(), vms.reload()), [hosts.reload, vms.reload]));
  useEvents((kind) => {
    if (kind === 'vm' || kind === 'job') refresh();
  });
  return (
    <>
      <h2>Hosts</h2>
      {hosts.error && <p className="error">{hosts.error}</p>}
      <table data-testid="hosts">
        <thead>
          <tr><th>host</th><th>state</th><th>memory free</th><th>VMs</th><th>QEMU</th><th>CPU</th><th>takes VMs</th></tr>
        </thead>
        <tbody>
          {hosts.data?.hosts.map((h) => (
            <tr key={h.name}>
              <td><a href={`#/host/${h.name}`}>{h.name}</a></td>
              <td className={h.state}>{h.state}</td>
              <td>{h.freeMemoryMiB !== undefined ? `${h.freeMemoryMiB} of ${h.memoryMiB} MiB` : '—'}</td>
              <td>{h.vms}</td>
              <td>{h.qemu ?? '—'}</td>
              <td>{h.cpu ? `${h.cpu.accel.toUpperCase()}, best ${h.cpu.best ?? '—'}${h.cpu.restriction ? ` (${h.cpu.restriction})` : ''}` : '—'}</td>
              <td>{h.takesNoVm ? `no: it ${h.takesNoVm}` : h.state === 'up' ? 'yes' : 'no'}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h2>VMs</h2>
      <VmTable vms={vms.data?.vms ?? []} />
      <h2>Storage</h2>
      <ul>
        {storage.data?.pools.map((p) => (
          <li key={p.name}>
            {p.name} ({p.type}, {p.location}): {p.reachedFrom}
          </li>
        ))}
      </ul>
    </>
  );
}

function VmTable({ vms }: { vms: VmView[] }) {
  return (
    <table data-testid="vms">
      <thead>
        <tr><th>VM</th><th>host</th><th>state</th><th>memory</th><th>CPU model</th><th>HA</th><th>address</th></tr>
      </thead>
      <tbody>
        {vms.map((v) => (
          <tr key={v.name} data-vm={v.name}>
            <td><a href={`#/vm/${v.name}`}>{v.name}</a></td>
            <td data-testid={`host-of-${v.name}`}>{v.host}{v.migrating ? ` → ${v.migrating.to}` : ''}</td>
            <td>{v.desired}</td>
            <td>{v.memoryMiB} MiB</td>
            <td>{v.cpuModel}</td>
            <td>{v.ha ? `${v.ha.actual}${v.ha.reason ? `: ${v.ha.reason}` : ''}` : '—'}</td>
            <td>{v.ip ?? '—'}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function VmPage({ name, session }: { name: string; session: Session }) {
  const vm = useLoad(
    () =>
      api<{
        vm: { spec: { name: string; memoryMiB: number; vcpus: number; cpuModel: string }; owner: string; desired: string; ip?: string };
        jobs: JobView[];
        ha: { resource: { request: string; maxRestart: number; maxRelocate: number }; status: { actual: string; reason?: string; lastAction?: string } | null } | null;
      }>('GET', `/vms/${encodeURIComponent(name)}`),
    [name],
  );
  const [dialog, setDialog] = useState(false);
  const [following, setFollowing] = useState<string>();
  useEvents((kind, data) => {
    if ((kind === 'vm' && data['name'] === name) || (kind === 'job' && data['vm'] === name && data['state'] !== 'running')) vm.reload();
    if (kind === 'job' && data['vm'] === name && data['kind'] === 'migrate' && data['state'] === 'running') setFollowing(String(data['id']));
  });
  if (vm.error) return <p className="error">{vm.error}</p>;
  if (!vm.data) return <p>loading…</p>;
  const { vm: record, jobs, ha } = vm.data;
  const migrations = jobs.filter((j) => j.kind === 'migrate').reverse();
  const running = migrations.find((j) => j.state === 'running');
  const live = following ?? running?.id;
  return (
    <>
      <h2>
        VM {name} <span className="muted">on</span> <span data-testid="vm-host">{record.owner}</span>
      </h2>
      <p>
        {record.desired}, {record.spec.memoryMiB} MiB, {record.spec.vcpus} vCPU, CPU {record.spec.cpuModel}, address {record.ip ?? '—'}
      </p>
      <HaPanel name={name} ha={ha} canChange={session.role !== 'viewer'} onChanged={vm.reload} />
      {session.role !== 'viewer' && !live && (
        <button data-testid="migrate-open" onClick={() => setDialog(true)}>
          Migrate…
        </button>
      )}
      {dialog && (
        <MigrateDialog
          name={name}
          onClose={() => setDialog(false)}
          onStarted={(id) => {
            setDialog(false);
            setFollowing(id);
          }}
        />
      )}
      {live && <LiveMigration key={live} jobId={live} canCancel={session.role !== 'viewer'} onEnd={() => (setFollowing(undefined), vm.reload())} />}
      <h3>Migrations</h3>
      {migrations.length === 0 && <p className="muted">none yet</p>}
      {migrations.filter((j) => j.state !== 'running').map((j) => (
        <MigrationRecordView key={j.id} job={j} />
      ))}
    </>
  );
}

/** A button's action: its error kept to show, `after` run whatever came of it (a reload). */
function useAction(after: () => void): [string | undefined, (what: () => Promise<unknown>) => Promise<void>] {
  const [error, setError] = useState<string>();
  const act = async (what: () => Promise<unknown>) => {
    setError(undefined);
    try {
      await what();
    } catch (err) {
      setError((err as Error).message);
    }
    after();
  };
  return [error, act];
}

/** What HA keeps the VM at and what it did last; operators change it. */
function HaPanel({ name, ha, canChange, onChanged }: { name: string; ha: { resource: { request: string }; status: { actual: string; reason?: string; lastAction?: string } | null } | null; canChange: boolean; onChanged: () => void }) {
  const [wanted, setWanted] = useState(ha?.resource.request ?? 'started');
  const [error, act] = useAction(onChanged);
  return (
    <div className="ha" data-testid="ha">
      HA:{' '}
      <span data-testid="ha-state">{ha ? `${ha.resource.request} (now ${ha.status?.actual ?? 'not looked at yet'}${ha.status?.reason ? `: ${ha.status.reason}` : ''})` : 'not under HA'}</span>
      {ha?.status?.lastAction && <span className="muted"> · last: {ha.status.lastAction}</span>}
      {canChange && (
        <>
          {' '}
          <select name="ha-request" value={wanted} onChange={(e) => setWanted(e.target.value)}>
            {['started', 'stopped', 'disabled', 'ignored'].map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>{' '}
          <button data-testid="ha-set" onClick={() => act(() => api('POST', `/vms/${encodeURIComponent(name)}/ha`, { request: wanted }))}>
            {ha ? 'Set' : 'Put under HA'}
          </button>
          {ha && (
            <button data-testid="ha-remove" onClick={() => act(() => api('DELETE', `/vms/${encodeURIComponent(name)}/ha`))}>
              Take out of HA
            </button>
          )}
        </>
      )}
      {error && <span className="error"> {error}</span>}
    </div>
  );
}

function MigrateDialog({ name, onClose, onStarted }: { name: string; onClose: () => void; onStarted: (jobId: string) => void }) {
  const candidates = useLoad(() => api<{ hosts: Candidate[] }>('GET', `/vms/${encodeURIComponent(name)}/candidates`), [name]);
  const [to, setTo] = useState<string>();
  const [policy, setPolicy] = useState('balanced');
  const [bandwidth, setBandwidth] = useState('');
  const [predictions, setPredictions] = useState<Prediction[]>();
  const [busy, setBusy] = useState<string>();
  const [error, setError] = useState<string>();
  const predict = async () => {
    setBusy('measuring the guest and the link…');
    setError(undefined);
    try {
      const { dryRun } = await api<{ dryRun: { predictions: Prediction[] } }>('POST', `/vms/${encodeURIComponent(name)}/migrate`, { to, dryRun: true });
      setPredictions(dryRun.predictions);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(undefined);
    }
  };
  const migrate = async () => {
    setBusy('starting…');
    setError(undefined);
    try {
      const { job } = await api<{ job: JobView }>('POST', `/vms/${encodeURIComponent(name)}/migrate`, { to, policy, ...(bandwidth ? { bandwidthMiBps: Number(bandwidth) } : {}) });
      onStarted(job.id);
    } catch (err) {
      setError((err as Error).message);
      setBusy(undefined);
    }
  };
  return (
    <div className="dialog" data-testid="migrate-dialog">
      <h3>Migrate {name}</h3>
      {candidates.error && <p className="error">{candidates.error}</p>}
      <table data-testid="candidates">
        <tbody>
          {candidates.data?.hosts.map((c) => (
            <tr key={c.host} data-host={c.host} data-ok={String(c.ok)}>
              <td>
                <label>
                  <input type="radio" name="to" value={c.host} disabled={!c.ok} checked={to === c.host} onChange={() => (setTo(c.host), setPredictions(undefined))} /> {c.host}
                </label>
              </td>
              <td className={c.ok ? 'ok' : 'no'}>{c.ok ? 'can take it' : 'cannot'}</td>
              <td className="reason">{c.reasons.join('; ')}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <label>
        Policy{' '}
        <select name="policy" value={policy} onChange={(e) => setPolicy(e.target.value)}>
          <option value="balanced">balanced</option>
          <option value="minimal-downtime">minimal-downtime</option>
          <option value="must-finish">must-finish</option>
        </select>
      </label>
      <label>
        {' '}Bandwidth cap{' '}
        <input name="bandwidth" type="number" min={1} placeholder="none" value={bandwidth} onChange={(e) => setBandwidth(e.target.value)} /> MiB/s
      </label>
      <div className="buttons">
        <button data-testid="predict" disabled={!to || !!busy} onClick={predict}>
          Predict (dry run)
        </button>
        <button data-testid="migrate-confirm" disabled={!to || !!busy} onClick={migrate}>
          Migrate to {to ?? '…'}
        </button>
        <button onClick={onClose}>Close</button>
      </div>
      {busy && <p className="muted">{busy}</p>}
      {error && <p className="error">{error}</p>}
      {predictions && (
        <table data-testid="predictions">
          <thead>
            <tr><th>policy</th><th>converges</th><th>total</th><th>pause</th><th>rounds</th><th>note</th></tr>
          </thead>
          <tbody>
            {predictions.map((p) => (
              <tr key={p.policy}>
                <td>{p.policy}</td>
                <td>{p.converges ? 'yes' : 'NO'}</td>
                <td>{seconds(p.totalMs)}</td>
                <td>{seconds(p.downtimeMs)}</td>
                <td>{p.rounds}</td>
                <td>{p.reason ?? ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

/** A running migration: the chart, the phase, progress that never goes back, an ETA, Cancel. */
function LiveMigration({ jobId, canCancel, onEnd }: { jobId: string; canCancel: boolean; onEnd: () => void }) {
  const chartRef = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);
  const series = useRef<[number[], number[], number[], number[]]>([[], [], [], []]);
  const [job, setJob] = useState<JobView>();
  const [done, setDone] = useState(0);
  const [cancelling, setCancelling] = useState(false);
  const [error, setError] = useState<string>();
  useEffect(() => {
    if (!chartRef.current) return;
    plot.current = new uPlot(
      {
        width: 640,
        height: 240,
        scales: { x: { time: false } },
        axes: [{ label: 's' }, { label: 'MiB, MiB/s' }],
        series: [{ label: 'elapsed s' }, { label: 'sent MiB', stroke: '#2a7' }, { label: 'left MiB', stroke: '#c53' }, { label: 'dirty MiB/s', stroke: '#36c' }],
      },
      series.current,
      chartRef.current,
    );
    return () => plot.current?.destroy();
  }, []);
  const ended = useRef(onEnd);
  ended.current = onEnd;
  const lastUpdate = useRef('');
  const take = useCallback(
    (j: JobView) => {
      if (j.updatedAt < lastUpdate.current) return; // an answer older than an event already taken
      lastUpdate.current = j.updatedAt;
      setJob(j);
      const ram = j.progress?.ram;
      if (ram && j.progress) {
        const [x, sent, left, dirty] = series.current;
        const t = j.progress.elapsedMs / 1000;
        if (x.length && t < x[x.length - 1]!) {
          // A new attempt (the memory check stopped the last one): its own chart and progress.
          for (const column of series.current) column.length = 0;
          setDone(0);
        }
        if (!x.length || t > x[x.length - 1]!) {
          x.push(t);
          sent.push(ram.transferredBytes / 2 ** 20);
          left.push(ram.remainingBytes / 2 ** 20);
          dirty.push(ram.dirtyRateBytesPerSec / 2 ** 20);
          plot.current?.setData(series.current);
        }
        const fraction = ram.totalBytes ? 1 - ram.remainingBytes / ram.totalBytes : 0;
        setDone((d) => Math.max(d, fraction)); // progress does not run backwards when a round adds dirty pages
      }
      if (j.state !== 'running') ended.current();
    },
    [],
  );
  useEffect(() => {
    api<{ job: JobView }>('GET', `/jobs/${encodeURIComponent(jobId)}`).then((r) => take(r.job), (e: Error) => setError(e.message));
  }, [jobId, take]);
  useEvents((kind, data) => {
    if (kind === 'job' && data['id'] === jobId) take(data as unknown as JobView);
  });
  const ram = job?.progress?.ram;
  const disk = job?.progress?.disk;
  // Left over what the stream gains on the guest: the guest's dirtying is sent again.
  const gain = ram ? ram.throughputBytesPerSec - ram.dirtyRateBytesPerSec : 0;
  const eta = ram && gain > 0 ? (ram.remainingBytes / gain) * 1000 : undefined;
  const cancel = async () => {
    setCancelling(true);
    try {
      await api('POST', `/jobs/${encodeURIComponent(jobId)}/cancel`);
    } catch (err) {
      setError((err as Error).message);
      setCancelling(false);
    }
  };
  return (
    <div className="live" data-testid="live-migration" data-points={series.current[0].length}>
      <h3>
        Migrating {job?.vm} from {job?.host}: <span data-testid="phase">{job?.progress?.phase ?? 'starting'}</span>
      </h3>
      {disk && !disk.ready && (
        <p data-testid="disk-progress">
          disks: <progress max={disk.totalBytes || 1} value={disk.copiedBytes} /> {mib(disk.copiedBytes)} of {mib(disk.totalBytes)} copied (RAM follows)
        </p>
      )}
      <progress max={1} value={done} /> {Math.round(done * 100)}% · round {ram?.round ?? '—'} · {ram ? `${mib(ram.transferredBytes)} sent, ${mib(ram.remainingBytes)} left, dirtied ${mib(ram.dirtyRateBytesPerSec)}/s` : ''} · ETA{' '}
      {ram && gain <= 0 && ram.round > 1 ? 'none: the guest dirties memory as fast as it is sent (the policy steps in)' : seconds(eta)}
      <div ref={chartRef} data-testid="chart" />
      {canCancel && (
        <button data-testid="cancel" disabled={cancelling} onClick={cancel}>
          {cancelling ? 'Cancelling…' : 'Cancel'}
        </button>
      )}
      {error && <p className="error">{error}</p>}
    </div>
  );
}

function MigrationRecordView({ job }: { job: JobView }) {
  const r = job.result;
  const total = r?.phases.reduce((s, p) => s + p.ms, 0) ?? 0;
  return (
    <div className="record" data-testid="migration-record" data-state={job.state}>
      <strong>{job.state === 'succeeded' ? 'moved' : 'failed'}</strong> {job.createdAt.slice(0, 19).replace('T', ' ')} from {job.host}
      {job.by ? ` (asked by ${job.by})` : ''}: {r ? `total ${seconds(r.totalMs)}, QEMU downtime ${seconds(r.downtimeMs)}, ` : ''}
      {r ? `client blackout ${r.clientBlackout ? `${seconds(r.clientBlackout.ms)} (${r.clientBlackout.packetsLost} of ${r.clientBlackout.packetsSent} packets lost)` : 'not probed'}, ` : ''}
      {r ? `${mib(r.bytes)} in ${r.rounds} rounds, ${r.attempts} attempt${r.attempts === 1 ? '' : 's'}` : ''}
      {job.error && <span className="error"> — {job.error}</span>}
      {r && r.steps.length > 0 && (
        <ul className="steps" data-testid="policy-steps">
          {r.steps.map((step, i) => (
            <li key={i}>
              {seconds(step.atMs)}, round {step.round}: {step.action.kind}
              {step.action.ms !== undefined ? ` ${step.action.ms} ms` : ''}
              {step.action.initialPercent !== undefined ? ` from ${step.action.initialPercent}%` : ''} — {step.reason}
            </li>
          ))}
        </ul>
      )}
      {r && total > 0 && (
        <div className="timeline">
          {r.phases.map((p) => (
            <span key={p.phase} style={{ flexGrow: p.ms }} title={`${p.phase} ${seconds(p.ms)}`}>
              {p.phase} {seconds(p.ms)}
            </span>
          ))}
        </div>
      )}
    </div>
  );
}

interface MoveJobView {
  id: string;
  kind: string;
  createdAt: string;
  host?: string;
  state: string;
  items: Array<{ vm: string; from: string; to: string; why?: string; progress: { state: string; reason?: string } }>;
}

/** A host: its VMs; Drain and Maintenance (operators), each move job's VMs as they go. */
function HostPage({ name, session }: { name: string; session: Session }) {
  const hosts = useLoad(() => api<{ hosts: HostView[] }>('GET', '/hosts'), []);
  const vms = useLoad(() => api<{ vms: VmView[] }>('GET', '/vms'), []);
  const moves = useLoad(() => api<{ jobs: MoveJobView[]; maintenances: Array<{ host: string; since: string; by: string }> }>('GET', '/moves'), []);
  const [plan, setPlan] = useState<MoveJobView['items']>();
  const host = hosts.data?.hosts.find((h) => h.name === name);
  const inMaintenance = moves.data?.maintenances.find((m) => m.host === name);
  const jobs = (moves.data?.jobs ?? [])
    .filter((j) => j.host === name)
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    .slice(0, 3);
  const running = jobs.some((j) => j.state === 'running' || j.state === 'cancelling');
  useEvents((kind) => kind === 'vm' && (vms.reload(), hosts.reload()));
  useEffect(() => {
    if (!running) return;
    const timer = setInterval(moves.reload, 1000); // move jobs are not on the event stream: looked at each second while one runs
    return () => clearInterval(timer);
  }, [running, moves.reload]);
  const [error, act] = useAction(() => (moves.reload(), hosts.reload()));
  const operator = session.role !== 'viewer';
  return (
    <>
      <h2>Host {name}</h2>
      {host && (
        <p data-testid="host-state">
          {host.state}, {host.freeMemoryMiB ?? '—'} of {host.memoryMiB ?? '—'} MiB free, QEMU {host.qemu ?? '—'}
          {inMaintenance ? `; in maintenance since ${inMaintenance.since} (by ${inMaintenance.by})` : host.takesNoVm ? `; takes no VM: it ${host.takesNoVm}` : ''}
        </p>
      )}
      {operator && (
        <div className="buttons">
          <button data-testid="drain-plan" disabled={running} onClick={() => act(async () => setPlan((await api<{ plan: MoveJobView['items'] }>('POST', `/nodes/${encodeURIComponent(name)}/drain`, { dryRun: true })).plan))}>
            Drain…
          </button>
          {inMaintenance ? (
            <button data-testid="maintenance-off" disabled={running} onClick={() => act(() => api('POST', `/nodes/${encodeURIComponent(name)}/maintenance`, { on: false }))}>
              End maintenance
            </button>
          ) : (
            <button data-testid="maintenance-on" disabled={running} onClick={() => act(() => api('POST', `/nodes/${encodeURIComponent(name)}/maintenance`, { on: true }))}>
              Maintenance
            </button>
          )}
        </div>
      )}
      {error && <p className="error">{error}</p>}
      {plan && (
        <div className="dialog" data-testid="drain-dialog">
          <h3>Drain {name}: the plan</h3>
          <MoveItems items={plan} />
          <div className="buttons">
            <button data-testid="drain-confirm" onClick={() => act(async () => (await api('POST', `/nodes/${encodeURIComponent(name)}/drain`, {}), setPlan(undefined)))}>
              Drain
            </button>
            <button onClick={() => setPlan(undefined)}>Close</button>
          </div>
        </div>
      )}
      {jobs.map((j) => (
        <div key={j.id} className="record" data-testid="move-job" data-state={j.state} data-kind={j.kind}>
          <strong>{j.kind}</strong> {j.id}: {j.state}
          {operator && (j.state === 'running' || j.state === 'cancelling') && <button onClick={() => act(() => api('POST', `/moves/${encodeURIComponent(j.id)}/cancel`))}>Cancel</button>}
          <MoveItems items={j.items} />
        </div>
      ))}
      <h3>VMs</h3>
      <VmTable vms={(vms.data?.vms ?? []).filter((v) => v.host === name)} />
    </>
  );
}

function MoveItems({ items }: { items: MoveJobView['items'] }) {
  return (
    <table>
      <tbody>
        {items.map((i) => (
          <tr key={i.vm} data-vm={i.vm} data-state={i.progress.state}>
            <td>{i.vm}</td>
            <td>{i.from} → {i.to || '—'}</td>
            <td>{i.progress.state}</td>
            <td className="reason">{i.progress.reason ?? i.why ?? ''}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function JobsPage() {
  const jobs = useLoad(() => api<{ jobs: JobView[] }>('GET', '/jobs'), []);
  useEvents((kind) => kind === 'job' && jobs.reload());
  return (
    <table data-testid="jobs">
      <thead>
        <tr><th>job</th><th>kind</th><th>VM</th><th>host</th><th>state</th><th>by</th><th>error</th></tr>
      </thead>
      <tbody>
        {[...(jobs.data?.jobs ?? [])].reverse().map((j) => (
          <tr key={j.id}>
            <td>{j.id}</td>
            <td>{j.kind}</td>
            <td><a href={`#/vm/${j.vm}`}>{j.vm}</a></td>
            <td>{j.host}</td>
            <td>{j.state}</td>
            <td>{j.by ?? '—'}</td>
            <td>{j.error ?? ''}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>();
  const [route, setRoute] = useState(routeOf(location.hash));
  useEffect(() => {
    const onHash = () => setRoute(routeOf(location.hash));
    window.addEventListener('hashchange', onHash);
    api<Session>('GET', '/session').then(
      (s) => (rememberSession(s), setSession(s)),
      (e: unknown) => setSession(e instanceof ApiError && e.status === 401 ? null : null),
    );
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  if (session === undefined) return <p>loading…</p>;
  if (session === null) return <Login onLogin={(s) => (rememberSession(s), setSession(s))} />;
  const logout = async () => {
    await api('DELETE', '/session').catch(() => undefined);
    setSession(null);
  };
  return (
    <>
      <nav>
        <strong>ferry</strong> <a href="#/">Overview</a> <a href="#/jobs">Jobs</a>
        <span className="who" data-testid="who">
          {session.user} ({session.role}) <button onClick={logout}>Log out</button>
        </span>
      </nav>
      <main>
        {route.page === 'overview' && <Overview />}
        {route.page === 'vm' && <VmPage name={route.name} session={session} />}
        {route.page === 'host' && <HostPage name={route.name} session={session} />}
        {route.page === 'jobs' && <JobsPage />}
      </main>
    </>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
