//! The local-process provisioner, the embedded default: each group is N processes of its
//! command on free loopback ports, each watched by a supervisor task that restarts it with
//! backoff when it dies, and sampled from `/proc`.
//!
//! Every instance runs in its own process group, so whatever it starts is stopped with it:
//! release sends the group SIGTERM, then SIGKILL after a grace period; dropping the
//! provisioner sends SIGKILL at once. An instance learns its port from the `PORT` variable (the
//! name is [`LocalOptions::port_env`]) and from `{port}` (or `{addr}`, `127.0.0.1:PORT`) in its
//! arguments; it is in the endpoints once it accepts TCP connections on `127.0.0.1:PORT`, and
//! while it keeps accepting them. `ensure` and `release` run one at a time; an `ensure` whose
//! future is dropped half-way leaves its group starting, and the next `ensure` adopts it.
//!
//! Not covered: a control plane killed with SIGKILL leaves its instances running (nothing runs
//! to stop them); they carry `SHADOWPLANE_GROUP` and `SHADOWPLANE_INSTANCE` in their
//! environment, so they can be found. A TCP probe cannot tell a stopped (SIGSTOP) or hung
//! process from a healthy one, since the kernel completes handshakes on its behalf; Envoy's
//! own health checks and outlier detection see those.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::procfs::{self, ProcIo, ProcStat};
use super::{
    BoxFuture, GroupHandle, GroupSpec, GroupStatus, InstanceState, InstanceStatus, ProvisionError,
    Provisioner, RecordedConfig, Result, SystemSample, Workload, differences, now_ms,
};

/// This provisioner's [`Provisioner::kind`].
pub const KIND: &str = "local";
/// The variable that names an instance's group.
pub const GROUP_ENV: &str = "SHADOWPLANE_GROUP";
/// The variable that holds an instance's index in its group, from 0.
pub const INSTANCE_ENV: &str = "SHADOWPLANE_INSTANCE";
/// The variable that holds the group's recorded version.
pub const VERSION_ENV: &str = "SHADOWPLANE_VERSION";
/// The most instances one local group may have: they share one machine.
pub const MAX_LOCAL_INSTANCES: u32 = 64;

/// Bytes of an instance's stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// Lines of that tail an error message quotes.
const STDERR_TAIL_LINES: usize = 3;
/// How often an instance that exits before it accepts connections is tried during `ensure`
/// before `ensure` fails: a second try on a new port gets past a port another process took
/// between our check and its bind.
const START_ATTEMPTS: u32 = 3;
/// How long one TCP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `release` waits, after the instances are reaped, for what they started to die.
const STRAGGLER_WAIT: Duration = Duration::from_secs(2);
const PROC: &str = "/proc";

/// How the local provisioner runs instances.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How long an instance may take from start to accepting connections before it is killed
    /// (and `ensure` fails). Default: 30 s.
    pub ready_timeout: Duration,
    /// The wait before restarting an instance that died; doubled after each crash up to
    /// `restart_backoff_max`. Default: 100 ms.
    pub restart_backoff: Duration,
    /// The longest wait before a restart. Default: 5 s.
    pub restart_backoff_max: Duration,
    /// An instance that ran this long before it died is restarted after `restart_backoff`
    /// again, not after the grown wait. Default: 10 s.
    pub stable_after: Duration,
    /// How long `release` waits after SIGTERM before SIGKILL. Default: 2 s.
    pub stop_grace: Duration,
    /// How often a ready instance is probed with a TCP connect. Default: 1 s.
    pub probe_interval: Duration,
    /// Consecutive failed probes that take an instance out of the endpoints (it is not
    /// restarted; one passing probe puts it back). Default: 3.
    pub probe_failures: u32,
    /// The environment variable that carries the instance's port. Default: `PORT`.
    pub port_env: String,
    /// Where instances' stdout and stderr are appended, one `GROUP-INDEX.log` each. Default:
    /// none (output is discarded; the end of stderr is kept for error messages).
    pub log_dir: Option<PathBuf>,
    /// The instances' working directory. Default: the control plane's.
    pub work_dir: Option<PathBuf>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            ready_timeout: Duration::from_secs(30),
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
            stop_grace: Duration::from_secs(2),
            probe_interval: Duration::from_secs(1),
            probe_failures: 3,
            port_env: "PORT".to_string(),
            log_dir: None,
            work_dir: None,
        }
    }
}

/// Runs groups as local processes on `127.0.0.1`. Dropping it kills every instance.
pub struct LocalProvisioner {
    opts: Arc<LocalOptions>,
    groups: Mutex<BTreeMap<String, Arc<Group>>>,
    /// Ports given to instances, so two instances never get the same one.
    ports: Arc<Mutex<BTreeSet<u16>>>,
    /// Serialises `ensure` and `release`: one group changes at a time.
    ops: tokio::sync::Mutex<()>,
}

struct Group {
    spec: GroupSpec,
    instances: Vec<Arc<Instance>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    sampler: Mutex<Sampler>,
}

struct Instance {
    index: u32,
    status: Mutex<InstanceStatus>,
    /// The running process group, and whether the instance may start another: checked and
    /// set under one lock so a stop never misses a process started at the same moment.
    slot: Mutex<Slot>,
    stderr: Mutex<Tail>,
}

#[derive(Default)]
struct Slot {
    stopped: bool,
    pgid: Option<Pid>,
}

/// What a supervisor shares with the provisioner.
struct Ctx {
    opts: Arc<LocalOptions>,
    spec: GroupSpec,
    command: String,
    ports: Arc<Mutex<BTreeSet<u16>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing behind these locks is left half-changed by a panic; keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalProvisioner {
    /// A provisioner with `opts`.
    pub fn new(opts: LocalOptions) -> LocalProvisioner {
        LocalProvisioner {
            opts: Arc::new(opts),
            groups: Mutex::new(BTreeMap::new()),
            ports: Arc::new(Mutex::new(BTreeSet::new())),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks what this provisioner needs beyond [`GroupSpec::check`].
    pub fn check(&self, spec: &GroupSpec) -> Result<()> {
        spec.check()?;
        let bad = |field: String, message: String| ProvisionError::InvalidSpec {
            group: spec.name.clone(),
            field,
            message,
        };
        let c = &spec.config;
        if let Workload::Image(_) = c.workload {
            return Err(ProvisionError::Unsupported {
                group: spec.name.clone(),
                provisioner: KIND,
                what: "container images (give a command)".into(),
            });
        }
        if !c.ports.is_empty() {
            return Err(bad(
                "config.ports".into(),
                "the local provisioner gives each instance a free loopback port (in $PORT and \
                 {port}); leave ports empty"
                    .into(),
            ));
        }
        if c.instances > MAX_LOCAL_INSTANCES {
            return Err(bad(
                "config.instances".into(),
                format!(
                    "{} is above {MAX_LOCAL_INSTANCES}, the most one machine runs",
                    c.instances
                ),
            ));
        }
        for k in c.env.keys() {
            if [
                self.opts.port_env.as_str(),
                GROUP_ENV,
                INSTANCE_ENV,
                VERSION_ENV,
            ]
            .contains(&k.as_str())
            {
                return Err(bad(
                    format!("config.env.{k}"),
                    "is set by the local provisioner".into(),
                ));
            }
        }
        Ok(())
    }

    fn group(&self, name: &str) -> Option<Arc<Group>> {
        lock(&self.groups).get(name).cloned()
    }

    /// Starts the supervisors of a new group; returns it with one receiver per instance that
    /// tells how its first start went.
    fn start(&self, spec: &GroupSpec) -> (Arc<Group>, Vec<oneshot::Receiver<Result<()>>>) {
        let ctx = Arc::new(Ctx {
            opts: Arc::clone(&self.opts),
            spec: spec.clone(),
            command: spec.config.workload.display(),
            ports: Arc::clone(&self.ports),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut instances = Vec::new();
        let mut tasks = Vec::new();
        let mut firsts = Vec::new();
        for index in 0..spec.config.instances {
            let inst = Arc::new(Instance {
                index,
                status: Mutex::new(InstanceStatus {
                    index,
                    state: InstanceState::Starting,
                    addr: None,
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                }),
                slot: Mutex::new(Slot::default()),
                stderr: Mutex::new(Tail::default()),
            });
            let (tx, rx) = oneshot::channel();
            let sup = Supervisor {
                ctx: Arc::clone(&ctx),
                inst: Arc::clone(&inst),
                stop: stop_rx.clone(),
                port: None,
            };
            tasks.push(tokio::spawn(sup.run(tx)));
            instances.push(inst);
            firsts.push(rx);
        }
        let group = Arc::new(Group {
            spec: spec.clone(),
            instances,
            stop,
            tasks: Mutex::new(tasks),
            sampler: Mutex::new(Sampler::new(Instant::now())),
        });
        (group, firsts)
    }

    /// Stops a group's instances (SIGTERM, then SIGKILL after the grace period) and waits
    /// until its processes are gone.
    async fn stop_group(&self, group: &Group) {
        let pgids = group.pgids();
        group.stop.send_replace(true);
        let tasks: Vec<_> = lock(&group.tasks).drain(..).collect();
        let deadline = tokio::time::Instant::now() + self.opts.stop_grace + Duration::from_secs(5);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        for i in &group.instances {
            i.kill_now();
        }
        // The instances are reaped; what they started got SIGKILL with their process group.
        let until = Instant::now() + STRAGGLER_WAIT;
        while Instant::now() < until {
            let left = tokio::task::spawn_blocking({
                let pgids = pgids.clone();
                move || procfs::group_members(Path::new(PROC), &pgids).map(|m| m.len())
            })
            .await;
            if !matches!(left, Ok(Ok(n)) if n > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Default for LocalProvisioner {
    fn default() -> Self {
        LocalProvisioner::new(LocalOptions::default())
    }
}

impl Group {
    fn pgids(&self) -> Vec<i32> {
        self.instances
            .iter()
            .filter_map(|i| lock(&i.slot).pgid.map(|p| p.as_raw_nonzero().get()))
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for i in &self.instances {
            i.kill_now();
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Instance {
    /// SIGKILLs the running process group, if any, and keeps another from starting.
    fn kill_now(&self) {
        let mut slot = lock(&self.slot);
        slot.stopped = true;
        if let Some(pgid) = slot.pgid {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }

    fn update(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut lock(&self.status));
    }
}

impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn ensure<'a>(&'a self, spec: &'a GroupSpec) -> BoxFuture<'a, Result<GroupHandle>> {
        Box::pin(async move {
            self.check(spec)?;
            let _op = self.ops.lock().await;
            let handle = GroupHandle::new(spec.name.clone());
            if let Some(g) = self.group(&spec.name) {
                let differs = differences(&g.spec.config, &spec.config);
                if differs.is_empty() {
                    return Ok(handle);
                }
                return Err(ProvisionError::Conflict {
                    group: spec.name.clone(),
                    differs: differs.join(", "),
                });
            }
            let (group, firsts) = self.start(spec);
            lock(&self.groups).insert(spec.name.clone(), Arc::clone(&group));
            let mut waits = JoinSet::new();
            for (i, rx) in firsts.into_iter().enumerate() {
                waits.spawn(async move { (i, rx.await) });
            }
            let mut failure = None;
            while let Some(joined) = waits.join_next().await {
                let (i, outcome) = match joined {
                    Ok(v) => v,
                    Err(e) => {
                        failure = Some(ProvisionError::Internal {
                            group: spec.name.clone(),
                            message: format!("waiting for an instance failed: {e}"),
                        });
                        break;
                    }
                };
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {
                        failure = Some(ProvisionError::Internal {
                            group: spec.name.clone(),
                            message: format!("the supervisor of instance {i} ended"),
                        });
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                lock(&self.groups).remove(&spec.name);
                self.stop_group(&group).await;
                return Err(e);
            }
            Ok(handle)
        })
    }

    fn endpoints(&self, group: &GroupHandle) -> Vec<SocketAddr> {
        let Some(g) = self.group(&group.name) else {
            return Vec::new();
        };
        g.instances
            .iter()
            .filter_map(|i| {
                let s = lock(&i.status);
                (s.state == InstanceState::Ready)
                    .then_some(s.addr)
                    .flatten()
            })
            .collect()
    }

    fn system_metrics<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<SystemSample>> {
        Box::pin(async move {
            let g = self
                .group(&group.name)
                .ok_or_else(|| ProvisionError::UnknownGroup {
                    group: group.name.clone(),
                })?;
            let pgids = g.pgids();
            let read = tokio::task::spawn_blocking(move || read_members(Path::new(PROC), &pgids))
                .await
                .map_err(|e| ProvisionError::Internal {
                    group: group.name.clone(),
                    message: format!("sampling /proc failed: {e}"),
                })?
                .map_err(|source| ProvisionError::Proc {
                    group: group.name.clone(),
                    path: PROC.to_string(),
                    source,
                })?;
            let sample = lock(&g.sampler).sample(Instant::now(), now_ms(), &read, *UNITS);
            Ok(sample)
        })
    }

    fn release<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _op = self.ops.lock().await;
            let Some(g) = lock(&self.groups).remove(&group.name) else {
                return Ok(());
            };
            self.stop_group(&g).await;
            Ok(())
        })
    }

    fn recorded(&self, group: &GroupHandle) -> Option<RecordedConfig> {
        self.group(&group.name).map(|g| g.spec.config.clone())
    }

    fn status(&self, group: &GroupHandle) -> Option<GroupStatus> {
        let g = self.group(&group.name)?;
        Some(GroupStatus {
            name: g.spec.name.clone(),
            provisioner: KIND,
            config: g.spec.config.clone(),
            instances: g
                .instances
                .iter()
                .map(|i| lock(&i.status).clone())
                .collect(),
        })
    }
}

/// How one run of an instance ended.
enum End {
    /// Told to stop; it was stopped.
    Stopped,
    /// The command could not be started.
    SpawnFailed(io::Error),
    /// No port could be found.
    NoPort(io::Error),
    /// It did not accept connections within the ready timeout; it was killed.
    NotReady { addr: SocketAddr },
    /// It exited by itself.
    Exited {
        addr: SocketAddr,
        status: String,
        ready: bool,
        ran_for: Duration,
    },
}

/// Keeps one instance running.
struct Supervisor {
    ctx: Arc<Ctx>,
    inst: Arc<Instance>,
    stop: watch::Receiver<bool>,
    /// The port this instance holds in [`Ctx::ports`].
    port: Option<u16>,
}

/// A started process. Dropping it SIGKILLs what is left of its process group.
struct Running {
    child: Child,
    pgid: Pid,
    inst: Arc<Instance>,
    pumps: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = kill_process_group(self.pgid, Signal::KILL);
        let mut slot = lock(&self.inst.slot);
        if slot.pgid == Some(self.pgid) {
            slot.pgid = None;
        }
    }
}

impl Supervisor {
    async fn run(mut self, first: oneshot::Sender<Result<()>>) {
        let mut first = Some(first);
        let mut attempts = 0;
        let mut backoff = self.ctx.opts.restart_backoff;
        let mut keep_port = false;
        loop {
            let end = self.run_once(keep_port, &mut first).await;
            let error = match end {
                End::Stopped => break,
                End::SpawnFailed(source) => {
                    keep_port = false;
                    ProvisionError::Spawn {
                        group: self.ctx.spec.name.clone(),
                        instance: self.inst.index,
                        command: self.ctx.command.clone(),
                        source,
                    }
                }
                End::NoPort(source) => {
                    keep_port = false;
                    ProvisionError::NoPort {
                        group: self.ctx.spec.name.clone(),
                        instance: self.inst.index,
                        source,
                    }
                }
                End::NotReady { addr } => {
                    keep_port = false;
                    ProvisionError::NotReady {
                        group: self.ctx.spec.name.clone(),
                        instance: self.inst.index,
                        command: self.ctx.command.clone(),
                        port: addr.port(),
                        timeout_ms: self.ctx.opts.ready_timeout.as_millis() as u64,
                        stderr: lock(&self.inst.stderr).last_lines(),
                    }
                }
                End::Exited {
                    addr,
                    status,
                    ready,
                    ran_for,
                } => {
                    // A crash after serving keeps its port (the endpoints stay put); an exit
                    // before serving may mean the port was taken, so the next try moves.
                    keep_port = ready;
                    if ran_for >= self.ctx.opts.stable_after {
                        backoff = self.ctx.opts.restart_backoff;
                    }
                    let stderr = lock(&self.inst.stderr).last_lines();
                    if ready {
                        self.crashed(super::stderr_suffix(&stderr), &status);
                        if !self.sleep(&mut backoff).await {
                            break;
                        }
                        continue;
                    }
                    ProvisionError::ExitedEarly {
                        group: self.ctx.spec.name.clone(),
                        instance: self.inst.index,
                        command: self.ctx.command.clone(),
                        status,
                        port: addr.port(),
                        stderr,
                    }
                }
            };
            if first.is_some() {
                attempts += 1;
                let retry = matches!(error, ProvisionError::ExitedEarly { .. })
                    && attempts < START_ATTEMPTS;
                if !retry {
                    self.inst.update(|s| {
                        s.state = InstanceState::Stopped;
                        s.last_exit = Some(error.to_string());
                    });
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(error));
                    }
                    break;
                }
            } else {
                self.crashed(String::new(), &error.to_string());
            }
            if !self.sleep(&mut backoff).await {
                break;
            }
        }
        self.inst.update(|s| {
            s.state = InstanceState::Stopped;
            s.pid = None;
        });
        self.give_back_port();
    }

    fn crashed(&self, stderr: String, how: &str) {
        tracing::warn!(
            group = %self.ctx.spec.name,
            instance = self.inst.index,
            "instance ended ({how}){stderr}; restarting"
        );
        self.inst.update(|s| {
            s.state = InstanceState::Restarting;
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(format!("{how}{stderr}"));
        });
    }

    /// Waits out the backoff and grows it; false when told to stop meanwhile.
    async fn sleep(&mut self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(self.ctx.opts.restart_backoff_max);
        tokio::select! {
            _ = stopped(&mut self.stop) => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    async fn run_once(
        &mut self,
        keep_port: bool,
        first: &mut Option<oneshot::Sender<Result<()>>>,
    ) -> End {
        if *self.stop.borrow() {
            return End::Stopped;
        }
        let port = match self.take_port(keep_port) {
            Ok(p) => p,
            Err(e) => return End::NoPort(e),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.inst.update(|s| {
            if s.state != InstanceState::Restarting {
                s.state = InstanceState::Starting;
            }
            s.addr = Some(addr);
            s.pid = None;
        });
        let mut run = match self.spawn(port) {
            Ok(Some(r)) => r,
            Ok(None) => return End::Stopped,
            Err(e) => return End::SpawnFailed(e),
        };
        let pid = run.child.id();
        self.inst.update(|s| {
            s.state = InstanceState::Starting;
            s.pid = pid;
        });
        let started = Instant::now();
        let deadline = started + self.ctx.opts.ready_timeout;
        let mut wait = Duration::from_millis(10);
        loop {
            tokio::select! {
                status = run.child.wait() => {
                    return self.exited(run, addr, status, false, started).await;
                }
                _ = stopped(&mut self.stop) => {
                    self.terminate(run).await;
                    return End::Stopped;
                }
                _ = tokio::time::sleep(wait) => {
                    if accepts(addr).await {
                        break;
                    }
                    if Instant::now() >= deadline {
                        // Dropping `run` kills it.
                        drop(run);
                        return End::NotReady { addr };
                    }
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
            }
        }
        self.inst.update(|s| s.state = InstanceState::Ready);
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        let every = self.ctx.opts.probe_interval;
        let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0;
        loop {
            tokio::select! {
                status = run.child.wait() => {
                    return self.exited(run, addr, status, true, started).await;
                }
                _ = stopped(&mut self.stop) => {
                    self.terminate(run).await;
                    return End::Stopped;
                }
                _ = probe.tick() => {
                    if accepts(addr).await {
                        failures = 0;
                        self.inst.update(|s| s.state = InstanceState::Ready);
                    } else {
                        failures += 1;
                        if failures >= self.ctx.opts.probe_failures.max(1) {
                            self.inst.update(|s| s.state = InstanceState::Unhealthy);
                        }
                    }
                }
            }
        }
    }

    async fn exited(
        &self,
        mut run: Running,
        addr: SocketAddr,
        status: io::Result<ExitStatus>,
        ready: bool,
        started: Instant,
    ) -> End {
        let ran_for = started.elapsed();
        // Let the pumps take in what it wrote last, for the message; a child it left behind
        // may hold the pipes open, so not for long.
        for p in run.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
        }
        drop(run);
        End::Exited {
            addr,
            status: match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            },
            ready,
            ran_for,
        }
    }

    /// SIGTERM to the process group; SIGKILL if the instance still runs after the grace.
    async fn terminate(&self, mut run: Running) {
        let _ = kill_process_group(run.pgid, Signal::TERM);
        let grace = self.ctx.opts.stop_grace;
        if tokio::time::timeout(grace, run.child.wait()).await.is_err() {
            let _ = kill_process_group(run.pgid, Signal::KILL);
            let _ = run.child.wait().await;
        }
        // Dropping `run` SIGKILLs whatever of the group ignored the SIGTERM.
    }

    /// The instance's port: the one it had when `keep` and it is still free, else a new one
    /// that no other instance holds.
    fn take_port(&mut self, keep: bool) -> io::Result<u16> {
        if keep
            && let Some(p) = self.port
            && StdListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
        {
            return Ok(p);
        }
        let mut held = lock(&self.ctx.ports);
        if let Some(old) = self.port.take() {
            held.remove(&old);
        }
        for _ in 0..32 {
            let p = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            if held.insert(p) {
                self.port = Some(p);
                return Ok(p);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "every port the kernel offered belongs to another instance",
        ))
    }

    fn give_back_port(&mut self) {
        if let Some(p) = self.port.take() {
            lock(&self.ctx.ports).remove(&p);
        }
    }

    /// Starts the instance's process in its own process group, unless it was stopped.
    fn spawn(&self, port: u16) -> io::Result<Option<Running>> {
        let spec = &self.ctx.spec;
        let Workload::Command { program, args } = &spec.config.workload else {
            return Err(io::Error::other("not a command"));
        };
        let index = self.inst.index.to_string();
        let port_s = port.to_string();
        let addr_s = SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
        let mut cmd = Command::new(program);
        cmd.args(args.iter().map(|a| {
            a.replace("{port}", &port_s)
                .replace("{addr}", &addr_s)
                .replace("{group}", &spec.name)
                .replace("{instance}", &index)
        }))
        .envs(&spec.config.env)
        .env(&self.ctx.opts.port_env, &port_s)
        .env(GROUP_ENV, &spec.name)
        .env(INSTANCE_ENV, &index)
        .env(VERSION_ENV, &spec.config.version)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        if let Some(dir) = &self.ctx.opts.work_dir {
            cmd.current_dir(dir);
        }
        let log = match &self.ctx.opts.log_dir {
            Some(dir) => {
                let path = dir.join(format!("{}-{}.log", spec.name, self.inst.index));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("its log {}: {e}", path.display()))
                    })?;
                Some(file)
            }
            None => None,
        };
        lock(&self.inst.stderr).clear();
        let mut slot = lock(&self.inst.slot);
        if slot.stopped {
            return Ok(None);
        }
        let mut child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("the started process has no pid"))?;
        slot.pgid = Some(pgid);
        drop(slot);
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let file = log.as_ref().and_then(|f| f.try_clone().ok());
            pumps.push(tokio::spawn(pump(out, file, None)));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, log, Some(Arc::clone(&self.inst)))));
        }
        Ok(Some(Running {
            child,
            pgid,
            inst: Arc::clone(&self.inst),
            pumps,
        }))
    }
}

/// Resolves when the group is told to stop (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Whether something accepts TCP connections at `addr`.
async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Copies a child's output to its log file, keeping the end of stderr for messages.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    log: Option<std::fs::File>,
    tail: Option<Arc<Instance>>,
) {
    let mut log = log.map(tokio::fs::File::from_std);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(inst) = &tail {
            lock(&inst.stderr).push(&buf[..n]);
        }
        if let Some(f) = log.as_mut()
            && f.write_all(&buf[..n]).await.is_err()
        {
            log = None;
        }
    }
}

/// The last bytes of a stream.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend(bytes);
        let over = self.0.len().saturating_sub(STDERR_TAIL_BYTES);
        self.0.drain(..over);
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// The last few non-empty lines, on one line.
    fn last_lines(&self) -> String {
        let bytes: Vec<u8> = self.0.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join(" | ")
    }
}

/// Clock ticks per second and page size, for `/proc`'s units.
#[derive(Debug, Clone, Copy)]
struct Units {
    ticks_per_second: u64,
    page_size: u64,
}

static UNITS: std::sync::LazyLock<Units> = std::sync::LazyLock::new(|| Units {
    ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
    page_size: rustix::param::page_size() as u64,
});

/// One process's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    ticks: u64,
    faults: u64,
    read: u64,
    write: u64,
}

impl Counters {
    fn of(stat: &ProcStat, io: Option<&ProcIo>) -> Counters {
        Counters {
            ticks: stat.utime + stat.stime,
            faults: stat.minflt + stat.majflt,
            read: io.map_or(0, |i| i.read_bytes),
            write: io.map_or(0, |i| i.write_bytes),
        }
    }

    fn add(&mut self, o: &Counters) {
        self.ticks += o.ticks;
        self.faults += o.faults;
        self.read += o.read;
        self.write += o.write;
    }
}

fn read_members(proc_root: &Path, pgids: &[i32]) -> io::Result<Vec<(ProcStat, Option<ProcIo>)>> {
    Ok(procfs::group_members(proc_root, pgids)?
        .into_iter()
        .map(|s| {
            let io = procfs::read_io(proc_root, s.pid);
            (s, io)
        })
        .collect())
}

/// Turns successive `/proc` readings of a group into [`SystemSample`]s: cumulative counters
/// that survive restarts, and CPU over the interval since the previous sample.
#[derive(Debug)]
struct Sampler {
    since: Instant,
    last_ticks: u64,
    /// The counters of each process seen last time, by (pid, start time).
    seen: HashMap<(i32, u64), Counters>,
    /// What processes that are gone did, as last seen.
    retired: Counters,
}

impl Sampler {
    fn new(start: Instant) -> Sampler {
        Sampler {
            since: start,
            last_ticks: 0,
            seen: HashMap::new(),
            retired: Counters::default(),
        }
    }

    fn sample(
        &mut self,
        now: Instant,
        at_ms: u64,
        members: &[(ProcStat, Option<ProcIo>)],
        units: Units,
    ) -> SystemSample {
        let mut seen = HashMap::new();
        let mut live = Counters::default();
        let mut rss_pages = 0;
        let mut io_known = true;
        for (stat, io) in members {
            let c = Counters::of(stat, io.as_ref());
            live.add(&c);
            rss_pages += stat.rss_pages;
            io_known &= io.is_some();
            seen.insert((stat.pid, stat.starttime), c);
        }
        for (key, c) in &self.seen {
            if !seen.contains_key(key) {
                self.retired.add(c);
            }
        }
        self.seen = seen;
        let mut total = self.retired;
        total.add(&live);
        let interval = now.saturating_duration_since(self.since);
        let d_ticks = total.ticks.saturating_sub(self.last_ticks);
        let cpu_cores = (interval.as_secs_f64() > 0.0)
            .then(|| d_ticks as f64 / units.ticks_per_second as f64 / interval.as_secs_f64());
        self.since = now;
        self.last_ticks = total.ticks;
        SystemSample {
            at_ms,
            interval_ms: interval.as_millis() as u64,
            processes: members.len() as u32,
            cpu_cores,
            cpu_seconds: Some(total.ticks as f64 / units.ticks_per_second as f64),
            rss_bytes: Some(rss_pages * units.page_size),
            page_faults: Some(total.faults),
            disk_read_bytes: io_known.then_some(total.read),
            disk_write_bytes: io_known.then_some(total.write),
            // No per-process network counters exist; see the procfs module.
            net_rx_bytes: None,
            net_tx_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    use shadowplane_e2e::Client;

    /// A server that checks `{port}` and `$PORT` agree, names its group and instance in
    /// `x-served-by`, and answers with `$GREETING`.
    const SERVER: &str = r#"
import http.server, os, sys
if sys.argv[1] != os.environ["PORT"]:
    sys.exit("port argument %s is not $PORT %s" % (sys.argv[1], os.environ["PORT"]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ.get("GREETING", "") + "\n").encode()
        self.send_response(200)
        name = os.environ["SHADOWPLANE_GROUP"] + "/" + os.environ["SHADOWPLANE_INSTANCE"]
        self.send_header("x-served-by", name)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

    /// The Python interpreter itself: `python3` may be a shim (pyenv) that costs a shell and
    /// more per start.
    fn python() -> String {
        static PY: OnceLock<String> = OnceLock::new();
        PY.get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("these tests run python3 servers; install python3");
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(!path.is_empty(), "python3 did not say where it is");
            path
        })
        .clone()
    }

    fn command(program: &str, args: &[&str]) -> Workload {
        Workload::Command {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn spec(name: &str, instances: u32, workload: Workload) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            config: RecordedConfig {
                workload,
                version: "v1".into(),
                instances,
                instance_type: "standard".into(),
                price_class: "standard".into(),
                env: BTreeMap::from([("GREETING".into(), "hello".into())]),
                ports: vec![],
            },
        }
    }

    fn server_spec(name: &str, instances: u32) -> GroupSpec {
        spec(
            name,
            instances,
            command(&python(), &["-c", SERVER, "{port}"]),
        )
    }

    #[tokio::test]
    async fn placeholders_in_arguments_are_filled_per_instance() {
        let p = LocalProvisioner::new(fast());
        // The server takes its port from argv[1]; argv[2] must be 127.0.0.1:PORT.
        let script = format!(
            "import os, sys\nif sys.argv[2] != '127.0.0.1:' + os.environ['PORT'] or \
             sys.argv[3] != 't-args-' + os.environ['SHADOWPLANE_INSTANCE']: \
             sys.exit('bad placeholders: %r' % sys.argv)\n{SERVER}"
        );
        let args = ["-c", &script, "{port}", "{addr}", "{group}-{instance}"];
        let g = p
            .ensure(&spec("t-args", 2, command(&python(), &args)))
            .await
            .unwrap();
        assert_eq!(p.endpoints(&g).len(), 2);
        p.release(&g).await.unwrap();
    }

    fn fast() -> LocalOptions {
        LocalOptions {
            restart_backoff: Duration::from_millis(20),
            stop_grace: Duration::from_secs(1),
            probe_interval: Duration::from_millis(100),
            probe_failures: 2,
            ..LocalOptions::default()
        }
    }

    /// Polls `f` every 20 ms until it holds or `timeout` passes.
    async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f()
    }

    fn pids(p: &LocalProvisioner, g: &GroupHandle) -> Vec<u32> {
        p.status(g)
            .unwrap()
            .instances
            .iter()
            .map(|i| i.pid.expect("a running instance has a pid"))
            .collect()
    }

    /// Every live process in the instances' process groups (leaders are their own pgid).
    fn members(pids: &[u32]) -> Vec<i32> {
        let pgids: Vec<i32> = pids.iter().map(|p| *p as i32).collect();
        procfs::group_members(Path::new(PROC), &pgids)
            .unwrap()
            .iter()
            .map(|s| s.pid)
            .collect()
    }

    async fn get(addr: SocketAddr) -> (u16, String, String) {
        let (status, headers, body) = Client::with_timeout(Duration::from_secs(10))
            .get(&format!("http://{addr}/"), &[])
            .await
            .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"));
        let by = headers
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, by, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn three_instances_come_up_on_their_own_ports_and_serve() {
        let p = LocalProvisioner::new(fast());
        let g = p.ensure(&server_spec("t-three", 3)).await.unwrap();
        let eps = p.endpoints(&g);
        assert_eq!(eps.len(), 3, "{eps:?}");
        let ports: BTreeSet<u16> = eps.iter().map(|a| a.port()).collect();
        assert_eq!(ports.len(), 3, "{eps:?}");
        for (i, addr) in eps.iter().enumerate() {
            assert!(addr.ip().is_loopback(), "{addr}");
            let (status, by, body) = get(*addr).await;
            assert_eq!(status, 200);
            assert_eq!(by, format!("t-three/{i}"));
            assert_eq!(body, "hello\n");
        }
        let st = p.status(&g).unwrap();
        assert_eq!(st.provisioner, "local");
        assert!(st.instances.iter().all(|i| i.state == InstanceState::Ready));
        assert_eq!(p.recorded(&g).unwrap(), server_spec("t-three", 3).config);
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn runs_the_test_upstream_program_and_one_instance_can_be_degraded() {
        let bin = shadowplane_e2e::upstream::upstream_bin();
        let p = LocalProvisioner::new(fast());
        let s = spec(
            "t-upstream",
            3,
            command(bin.to_str().unwrap(), &["--name", "{group}-{instance}"]),
        );
        let g = p.ensure(&s).await.unwrap();
        let eps = p.endpoints(&g);
        assert_eq!(eps.len(), 3, "{eps:?}");
        for (i, addr) in eps.iter().enumerate() {
            let (status, by, _) = get(*addr).await;
            assert_eq!((status, by), (200, format!("t-upstream-{i}")));
        }
        // Kill one: it comes back on its port and serves again.
        let old = pids(&p, &g);
        rustix::process::kill_process(Pid::from_raw(old[2] as i32).unwrap(), Signal::KILL).unwrap();
        let back = eventually(Duration::from_secs(30), || {
            let i = &p.status(&g).unwrap().instances[2];
            i.restarts == 1 && i.state == InstanceState::Ready
        })
        .await;
        assert!(back, "{:#?}", p.status(&g));
        assert_eq!(p.endpoints(&g), eps);
        assert_eq!(get(eps[2]).await.1, "t-upstream-2");

        // A degradation injected into one instance reaches only that one.
        let client = Client::with_timeout(Duration::from_secs(10));
        let url = format!("http://{}/_control/delay_ms", eps[0]);
        let (status, _, _) = client
            .request(hyper::Method::PUT, &url, &[], bytes::Bytes::from("120"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let started = Instant::now();
        get(eps[0]).await;
        assert!(started.elapsed() >= Duration::from_millis(120));
        let state = |addr: SocketAddr| {
            let client = client.clone();
            async move {
                let (_, _, body) = client
                    .get(&format!("http://{addr}/_control/state"), &[])
                    .await
                    .unwrap();
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            }
        };
        assert_eq!(state(eps[0]).await["delay_ms"], 120);
        assert_eq!(state(eps[1]).await["delay_ms"], 0);

        let all = members(&pids(&p, &g));
        p.release(&g).await.unwrap();
        assert!(
            all.iter().all(|pid| !procfs::alive(Path::new(PROC), *pid)),
            "{all:?}"
        );
    }

    #[tokio::test]
    async fn a_killed_instance_is_restarted_and_the_endpoints_recover() {
        let p = LocalProvisioner::new(fast());
        let g = p.ensure(&server_spec("t-restart", 3)).await.unwrap();
        let before = p.system_metrics(&g).await.unwrap();
        let old = pids(&p, &g);
        let old_addr = p.status(&g).unwrap().instances[1].addr.unwrap();
        let victim = Pid::from_raw(old[1] as i32).unwrap();
        rustix::process::kill_process(victim, Signal::KILL).unwrap();

        let recovered = eventually(Duration::from_secs(30), || {
            let s = p.status(&g).unwrap();
            let i = &s.instances[1];
            i.restarts == 1
                && i.state == InstanceState::Ready
                && i.pid.is_some_and(|pid| pid != old[1])
        })
        .await;
        let s = p.status(&g).unwrap();
        assert!(recovered, "{s:#?}");
        let i = &s.instances[1];
        assert!(
            i.last_exit.as_deref().unwrap().contains("SIGKILL"),
            "{:?}",
            i.last_exit
        );
        // Same port when it is still free, so the endpoints do not churn.
        assert_eq!(i.addr, Some(old_addr));
        assert_eq!(p.endpoints(&g).len(), 3);
        let (status, by, _) = get(i.addr.unwrap()).await;
        assert_eq!((status, by.as_str()), (200, "t-restart/1"));
        // The others were not touched.
        assert_eq!(s.instances[0].pid, Some(old[0]));
        assert_eq!(s.instances[2].pid, Some(old[2]));
        // Counters keep counting across the restart.
        let after = p.system_metrics(&g).await.unwrap();
        assert!(after.page_faults.unwrap() >= before.page_faults.unwrap());
        assert!(after.cpu_seconds.unwrap() >= before.cpu_seconds.unwrap());
        assert_eq!(after.processes, 3);
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn release_kills_every_process_of_the_group_and_is_idempotent() {
        let p = LocalProvisioner::new(fast());
        // Each instance is a shell that leaves a `sleep` behind and becomes the server: the
        // `sleep` is in the instance's process group, not one of its pids.
        let script = format!("sleep 300 & exec {} -c \"$0\" \"$1\"", python());
        let g = p
            .ensure(&spec(
                "t-release",
                2,
                command("/bin/sh", &["-c", &script, SERVER, "{port}"]),
            ))
            .await
            .unwrap();
        let leaders = pids(&p, &g);
        let all = members(&leaders);
        assert_eq!(all.len(), 4, "two servers and two sleeps: {all:?}");

        p.release(&g).await.unwrap();
        let left: Vec<i32> = all
            .iter()
            .copied()
            .filter(|pid| procfs::alive(Path::new(PROC), *pid))
            .collect();
        assert!(left.is_empty(), "still running after release: {left:?}");
        assert!(p.endpoints(&g).is_empty());
        assert!(p.status(&g).is_none());
        assert!(p.recorded(&g).is_none());
        p.release(&g).await.unwrap();
        assert!(matches!(
            p.system_metrics(&g).await,
            Err(ProvisionError::UnknownGroup { .. })
        ));
    }

    #[tokio::test]
    async fn dropping_the_provisioner_kills_every_instance() {
        let p = LocalProvisioner::new(fast());
        let g = p.ensure(&server_spec("t-drop", 2)).await.unwrap();
        let all = members(&pids(&p, &g));
        assert_eq!(all.len(), 2, "{all:?}");
        drop(p);
        let gone = eventually(Duration::from_secs(5), || {
            all.iter().all(|pid| !procfs::alive(Path::new(PROC), *pid))
        })
        .await;
        assert!(gone, "still running after drop: {all:?}");
    }

    #[tokio::test]
    async fn metrics_come_from_the_groups_processes() {
        let p = LocalProvisioner::new(fast());
        let g = p.ensure(&server_spec("t-metrics", 2)).await.unwrap();
        let addr = p.endpoints(&g)[0];
        for _ in 0..20 {
            get(addr).await;
        }
        let s = p.system_metrics(&g).await.unwrap();
        assert_eq!(s.processes, 2, "{s:?}");
        assert!(s.rss_bytes.unwrap() > 1 << 20, "{s:?}");
        assert!(s.page_faults.unwrap() > 0, "{s:?}");
        // Python's start alone takes tens of milliseconds of CPU.
        assert!(s.cpu_seconds.unwrap() > 0.0, "{s:?}");
        assert!(s.cpu_cores.unwrap() >= 0.0, "{s:?}");
        assert!(s.at_ms > 0 && s.interval_ms > 0, "{s:?}");
        assert_eq!(s.net_rx_bytes, None);
        assert_eq!(s.net_tx_bytes, None);
        if Path::new("/proc/self/io").exists() {
            assert!(s.disk_read_bytes.is_some(), "{s:?}");
        }
        let s2 = p.system_metrics(&g).await.unwrap();
        assert!(s2.page_faults >= s.page_faults);
        assert!(s2.cpu_seconds >= s.cpu_seconds);
        assert!(s2.at_ms >= s.at_ms);
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn an_instance_that_stops_listening_leaves_the_endpoints_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("close");
        let script = r#"
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
s.close()
time.sleep(300)
"#;
        let p = LocalProvisioner::new(fast());
        let g = p
            .ensure(&spec(
                "t-unhealthy",
                1,
                command(&python(), &["-c", script, flag.to_str().unwrap()]),
            ))
            .await
            .unwrap();
        assert_eq!(p.endpoints(&g).len(), 1);
        std::fs::write(&flag, "").unwrap();
        let out = eventually(Duration::from_secs(20), || p.endpoints(&g).is_empty()).await;
        let s = p.status(&g).unwrap();
        assert!(out, "{s:#?}");
        assert_eq!(s.instances[0].state, InstanceState::Unhealthy);
        assert_eq!(s.instances[0].restarts, 0);
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_program_fails_ensure_naming_group_instance_and_command() {
        let p = LocalProvisioner::new(fast());
        let s = spec(
            "t-missing",
            2,
            command(
                "/nonexistent/shadowplane-no-such-program",
                &["--port", "{port}"],
            ),
        );
        let e = p.ensure(&s).await.unwrap_err();
        assert!(matches!(e, ProvisionError::Spawn { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("group \"t-missing\" instance ")
                && msg.contains(
                    ": cannot run `/nonexistent/shadowplane-no-such-program --port {port}`: "
                ),
            "{msg}"
        );
        let g = GroupHandle::new("t-missing");
        assert!(p.status(&g).is_none());
        assert!(p.endpoints(&g).is_empty());
    }

    #[tokio::test]
    async fn a_command_that_exits_fails_ensure_with_its_status_and_stderr() {
        let p = LocalProvisioner::new(fast());
        let s = spec(
            "t-exits",
            1,
            command(
                &python(),
                &[
                    "-c",
                    "import sys; sys.stderr.write('starting\\nboom: no config file\\n'); \
                     sys.exit(3)",
                ],
            ),
        );
        let e = p.ensure(&s).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ProvisionError::ExitedEarly { .. }), "{e:?}");
        assert!(msg.starts_with("group \"t-exits\" instance 0: "), "{msg}");
        assert!(
            msg.contains("exited (exit status: 3) before accepting"),
            "{msg}"
        );
        assert!(
            msg.ends_with("its stderr ends with: starting | boom: no config file"),
            "{msg}"
        );
        assert!(p.status(&GroupHandle::new("t-exits")).is_none());
    }

    #[tokio::test]
    async fn a_command_that_never_listens_is_killed_after_the_ready_timeout() {
        let p = LocalProvisioner::new(LocalOptions {
            ready_timeout: Duration::from_millis(500),
            ..fast()
        });
        // An odd duration marks the process so the test can look for it.
        let e = p
            .ensure(&spec("t-deaf", 1, command("sleep", &["299.123"])))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ProvisionError::NotReady { .. }), "{e:?}");
        assert!(
            msg.starts_with("group \"t-deaf\" instance 0: `sleep 299.123` did not accept")
                && msg.contains("within 500 ms"),
            "{msg}"
        );
        let left = eventually(Duration::from_secs(5), || with_arg("299.123").is_empty()).await;
        assert!(left, "still running: {:?}", with_arg("299.123"));
    }

    /// Live processes with `arg` on their command line.
    fn with_arg(arg: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(PROC).unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
                && procfs::alive(Path::new(PROC), pid)
            {
                out.push(pid);
            }
        }
        out
    }

    #[tokio::test]
    async fn ensure_adopts_the_same_group_and_refuses_a_changed_one() {
        let p = LocalProvisioner::new(fast());
        let s = server_spec("t-adopt", 1);
        let g = p.ensure(&s).await.unwrap();
        let first = pids(&p, &g);
        assert_eq!(p.ensure(&s).await.unwrap(), g);
        assert_eq!(pids(&p, &g), first, "adopting must not restart");

        let mut changed = s.clone();
        changed.config.env.insert("GREETING".into(), "bye".into());
        changed.config.version = "v2".into();
        let e = p.ensure(&changed).await.unwrap_err().to_string();
        assert_eq!(
            e,
            "group \"t-adopt\" already runs another configuration (version, env); release it \
             first"
        );
        p.release(&g).await.unwrap();
        let g = p.ensure(&changed).await.unwrap();
        let (_, _, body) = get(p.endpoints(&g)[0]).await;
        assert_eq!(body, "bye\n");
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn specs_the_local_provisioner_cannot_run_are_refused_before_anything_starts() {
        let p = LocalProvisioner::new(fast());
        let mut image = server_spec("t-image", 1);
        image.config.workload = Workload::Image("ghcr.io/acme/checkout:1".into());
        let mut ports = server_spec("t-ports", 1);
        ports.config.ports = vec![8080];
        let mut port_env = server_spec("t-env", 1);
        port_env.config.env.insert("PORT".into(), "80".into());
        let many = server_spec("t-many", MAX_LOCAL_INSTANCES + 1);
        let cases = [
            (
                image,
                "group \"t-image\": the local provisioner does not support container images",
            ),
            (
                ports,
                "group \"t-ports\": config.ports: the local provisioner",
            ),
            (
                port_env,
                "group \"t-env\": config.env.PORT: is set by the local",
            ),
            (many, "group \"t-many\": config.instances: 65 is above 64"),
        ];
        for (s, want) in cases {
            let e = p.ensure(&s).await.unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want}\n got {e}");
            assert!(p.status(&GroupHandle::new(&s.name)).is_none());
        }
        // No instances at all is a valid group (scaled to zero).
        let g = p.ensure(&server_spec("t-zero", 0)).await.unwrap();
        assert!(p.endpoints(&g).is_empty());
        assert_eq!(p.system_metrics(&g).await.unwrap().processes, 0);
        p.release(&g).await.unwrap();
    }

    #[tokio::test]
    async fn output_goes_to_the_log_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = LocalProvisioner::new(LocalOptions {
            log_dir: Some(dir.path().to_path_buf()),
            ..fast()
        });
        // Two pipes into one file interleave at the write calls: look for each word alone.
        let script = format!(
            "import sys; print('to-stdout', flush=True); sys.stderr.write('to-stderr\\n'); \
             sys.stderr.flush()\n{SERVER}"
        );
        let g = p
            .ensure(&spec(
                "t-log",
                1,
                command(&python(), &["-c", &script, "{port}"]),
            ))
            .await
            .unwrap();
        let log = dir.path().join("t-log-0.log");
        let both = eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("to-stdout") && text.contains("to-stderr")
        })
        .await;
        assert!(both, "{:?}", std::fs::read_to_string(&log));
        p.release(&g).await.unwrap();

        let bad = LocalProvisioner::new(LocalOptions {
            log_dir: Some(dir.path().join("missing")),
            ..fast()
        });
        let e = bad
            .ensure(&server_spec("t-log-missing", 1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("group \"t-log-missing\" instance 0: cannot run `")
                && e.contains(": its log ")
                && e.contains("missing/t-log-missing-0.log: "),
            "{e}"
        );
    }

    #[test]
    fn the_sampler_keeps_counting_across_restarts() {
        let units = Units {
            ticks_per_second: 100,
            page_size: 4096,
        };
        let stat = |pid, start, ticks, faults, rss| ProcStat {
            pid,
            state: 'S',
            ppid: 1,
            pgrp: pid,
            minflt: faults,
            majflt: 0,
            utime: ticks,
            stime: 0,
            starttime: start,
            rss_pages: rss,
        };
        let io = |r, w| {
            Some(ProcIo {
                read_bytes: r,
                write_bytes: w,
            })
        };
        let t0 = Instant::now();
        let mut s = Sampler::new(t0);
        let a = s.sample(
            t0 + Duration::from_secs(1),
            1000,
            &[(stat(10, 1, 50, 100, 10), io(4096, 0))],
            units,
        );
        assert_eq!(a.cpu_cores, Some(0.5));
        assert_eq!(a.cpu_seconds, Some(0.5));
        assert_eq!(a.rss_bytes, Some(40960));
        assert_eq!(a.page_faults, Some(100));
        assert_eq!(a.disk_read_bytes, Some(4096));
        assert_eq!(a.interval_ms, 1000);
        // Pid 10 died and came back as pid 11; pid 10's last counts stay in the totals.
        let b = s.sample(
            t0 + Duration::from_secs(3),
            3000,
            &[(stat(11, 9, 20, 30, 5), io(0, 8192))],
            units,
        );
        assert_eq!(b.cpu_seconds, Some(0.7));
        assert_eq!(b.cpu_cores, Some(0.1));
        assert_eq!(b.page_faults, Some(130));
        assert_eq!(b.rss_bytes, Some(20480));
        assert_eq!(
            (b.disk_read_bytes, b.disk_write_bytes),
            (Some(4096), Some(8192))
        );
        assert_eq!(b.processes, 1);
        // Pid reuse with a new start time is a new process, not the old one going backwards.
        let c = s.sample(
            t0 + Duration::from_secs(4),
            4000,
            &[(stat(11, 20, 1, 1, 5), None)],
            units,
        );
        assert_eq!(c.cpu_seconds, Some(0.71));
        assert_eq!(c.page_faults, Some(131));
        assert_eq!(
            c.disk_read_bytes, None,
            "one unreadable io file hides the sum"
        );
    }

    #[test]
    fn the_stderr_tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        assert_eq!(t.last_lines(), "");
        t.push(b"one\ntwo\n\nthree\nfour\n");
        assert_eq!(t.last_lines(), "two | three | four");
        t.push(&vec![b'x'; STDERR_TAIL_BYTES * 2]);
        assert_eq!(t.0.len(), STDERR_TAIL_BYTES);
    }
}
