//! The engine side: one wasmtime `Engine` and `Linker` per [`Host`], built once; modules
//! compiled once into a [`Compiled`] (an `InstancePre` on the pooling allocator) and
//! instantiated as often as needed. An epoch thread bounds every callback's running time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, Val, ValType,
};

use crate::abi::{AbiVersion, Status};
use crate::error::{Error, Result};
use crate::hostcalls;
use crate::hostcalls::wasi::errno;
use crate::state::{HostState, InstanceSettings, Shared};

/// Limits every instance of a host runs under.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Linear memory cap per instance, in bytes. Default: 64 MiB.
    pub memory_limit: usize,
    /// Longest a single callback may run before it is stopped as a trap. Default: 1 s.
    pub callback_deadline: Duration,
    /// Instances the pooling allocator holds slots for at once. Default: 32.
    pub max_instances: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            callback_deadline: Duration::from_secs(1),
            max_instances: 32,
        }
    }
}

/// How often the epoch advances; deadlines are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(5);

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    config: HostConfig,
    _ticker: Ticker,
}

/// A wasmtime engine with the proxy-wasm host functions linked; cheap to clone.
#[derive(Clone)]
pub struct Host(Arc<HostInner>);

impl Host {
    /// Builds the engine (Cranelift, pooling allocator, epoch interruption) and the linker.
    pub fn new(config: HostConfig) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .max_memory_size(config.memory_limit);
        let mut wc = Config::new();
        wc.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wc)?;
        let mut linker = Linker::new(&engine);
        hostcalls::add_to_linker(&mut linker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("host-runner-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Invalid(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(Host(Arc::new(HostInner {
            engine,
            linker,
            config,
            _ticker: Ticker {
                stop,
                thread: Some(thread),
            },
        })))
    }

    /// The limits.
    pub fn config(&self) -> &HostConfig {
        &self.0.config
    }

    /// Compiles a module (binary wasm) once, for any number of instances.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled> {
        let module = Module::new(&self.0.engine, wasm)?;
        let abi =
            AbiVersion::detect(module.exports().map(|e| e.name())).ok_or(Error::UnknownAbi)?;
        let mut linker = self.0.linker.clone();
        let stubs = stub_unknown_imports(&self.0.engine, &mut linker, &module)?;
        let pre = linker.instantiate_pre(&module)?;
        Ok(Compiled {
            host: self.clone(),
            pre,
            abi,
            stubs,
        })
    }

    pub(crate) fn deadline_ticks(&self) -> u64 {
        let t = self.0.config.callback_deadline.as_micros() / EPOCH_TICK.as_micros();
        u64::try_from(t).unwrap_or(u64::MAX).max(1)
    }
}

/// A module compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct Compiled {
    host: Host,
    pub(crate) pre: InstancePre<HostState>,
    abi: AbiVersion,
    stubs: Vec<String>,
}

impl Compiled {
    /// The ABI version the module declares.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// Imports the host does not implement, answered UNIMPLEMENTED (proxy-wasm) or ENOSYS
    /// (WASI) and logged on first use.
    pub fn stubbed_imports(&self) -> &[String] {
        &self.stubs
    }

    /// The names the module exports (functions, memory, globals), in the module's order. Envoy
    /// calls into the VM for every proxy-wasm callback a module exports, so this list is part of
    /// what a filter costs.
    pub fn exports(&self) -> Vec<String> {
        self.pre
            .module()
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }

    /// The host it was compiled on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub(crate) fn new_store(&self, settings: InstanceSettings, shared: Shared) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.host.0.config.memory_limit)
            .build();
        let mut store = Store::new(
            &self.host.0.engine,
            HostState::new(settings, shared, limits),
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }
}

/// Gives each function import of the `env` and `wasi_snapshot_preview1` modules that the
/// linker lacks a stub of the right type, so modules built against a newer or larger ABI
/// load: the stub returns UNIMPLEMENTED or ENOSYS and logs its name once.
fn stub_unknown_imports(
    engine: &Engine,
    linker: &mut Linker<HostState>,
    module: &Module,
) -> Result<Vec<String>> {
    let mut probe = Store::new(
        engine,
        HostState::new(
            InstanceSettings::default(),
            Shared::new(),
            StoreLimitsBuilder::new().build(),
        ),
    );
    let mut missing = BTreeSet::new();
    for import in module.imports() {
        if linker.get_by_import(&mut probe, &import).is_some() {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let code = match import.module() {
            "env" => Status::Unimplemented as i32,
            "wasi_snapshot_preview1" => errno::NOSYS as i32,
            _ => continue,
        };
        let name = format!("{}.{}", import.module(), import.name());
        let results: Vec<ValType> = ty.results().collect();
        let logged = name.clone();
        linker.func_new(
            import.module(),
            import.name(),
            ty,
            move |mut c, _args, out| {
                c.data_mut().unimplemented(&logged);
                for (slot, t) in out.iter_mut().zip(&results) {
                    *slot = match t {
                        ValType::I32 => Val::I32(code),
                        ValType::I64 => Val::I64(i64::from(code)),
                        ValType::F32 => Val::F32(0),
                        ValType::F64 => Val::F64(0),
                        _ => Val::null_func_ref(),
                    };
                }
                Ok(())
            },
        )?;
        missing.insert(name);
    }
    Ok(missing.into_iter().collect())
}
