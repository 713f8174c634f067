//! One plugin instance: its `Store`, the callbacks it exports, and the context lifecycle
//! (VM start, configure, root and stream contexts, done/log/delete) driven as Envoy drives it.

use wasmtime::{Instance, Store, Trap, TypedFunc, WasmParams, WasmResults};

use crate::abi::{AbiVersion, Action};
use crate::error::{Error, Result};
use crate::host::Compiled;
use crate::state::{CalloutResponse, HostState, InstanceSettings, Shared, Stream};

/// The root context id this host gives the plugin.
pub const ROOT_CONTEXT: u32 = 1;

type F1 = TypedFunc<u32, ()>;
type F2 = TypedFunc<(u32, u32), ()>;
type F3 = TypedFunc<(u32, u32, u32), ()>;
type R1 = TypedFunc<u32, u32>;
type R2 = TypedFunc<(u32, u32), u32>;
type R3 = TypedFunc<(u32, u32, u32), u32>;
type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// `proxy_on_*_headers`: v0.1.0 has no end_of_stream argument.
#[derive(Clone)]
enum Headers {
    Eos(R3),
    NoEos(R2),
}

#[derive(Clone, Default)]
struct Callbacks {
    vm_start: Option<R2>,
    configure: Option<R2>,
    context_create: Option<F2>,
    request_headers: Option<Headers>,
    request_body: Option<R3>,
    request_trailers: Option<R2>,
    response_headers: Option<Headers>,
    response_body: Option<R3>,
    response_trailers: Option<R2>,
    done: Option<R1>,
    log: Option<F1>,
    delete: Option<F1>,
    tick: Option<F1>,
    queue_ready: Option<F2>,
    http_call_response: Option<F5>,
    grpc_initial_metadata: Option<F3>,
    grpc_receive: Option<F3>,
    grpc_trailing_metadata: Option<F3>,
    grpc_close: Option<F3>,
    foreign_function: Option<F3>,
    new_connection: Option<R1>,
    downstream_data: Option<R3>,
    upstream_data: Option<R3>,
    downstream_close: Option<F2>,
    upstream_close: Option<F2>,
}

fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("export {name} has the wrong type: {e:#}"))),
    }
}

fn headers_fn(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<Headers>> {
    if let Ok(Some(f)) = typed::<(u32, u32, u32), u32>(store, instance, name) {
        return Ok(Some(Headers::Eos(f)));
    }
    Ok(typed::<(u32, u32), u32>(store, instance, name)?.map(Headers::NoEos))
}

impl Callbacks {
    fn resolve(store: &mut Store<HostState>, i: &Instance) -> Result<Self> {
        Ok(Self {
            vm_start: typed(store, i, "proxy_on_vm_start")?,
            configure: typed(store, i, "proxy_on_configure")?,
            context_create: typed(store, i, "proxy_on_context_create")?,
            request_headers: headers_fn(store, i, "proxy_on_request_headers")?,
            request_body: typed(store, i, "proxy_on_request_body")?,
            request_trailers: typed(store, i, "proxy_on_request_trailers")?,
            response_headers: headers_fn(store, i, "proxy_on_response_headers")?,
            response_body: typed(store, i, "proxy_on_response_body")?,
            response_trailers: typed(store, i, "proxy_on_response_trailers")?,
            done: typed(store, i, "proxy_on_done")?,
            log: typed(store, i, "proxy_on_log")?,
            delete: typed(store, i, "proxy_on_delete")?,
            tick: typed(store, i, "proxy_on_tick")?,
            queue_ready: typed(store, i, "proxy_on_queue_ready")?,
            http_call_response: typed(store, i, "proxy_on_http_call_response")?,
            grpc_initial_metadata: typed(store, i, "proxy_on_grpc_receive_initial_metadata")?,
            grpc_receive: typed(store, i, "proxy_on_grpc_receive")?,
            grpc_trailing_metadata: typed(store, i, "proxy_on_grpc_receive_trailing_metadata")?,
            grpc_close: typed(store, i, "proxy_on_grpc_close")?,
            foreign_function: typed(store, i, "proxy_on_foreign_function")?,
            new_connection: typed(store, i, "proxy_on_new_connection")?,
            downstream_data: typed(store, i, "proxy_on_downstream_data")?,
            upstream_data: typed(store, i, "proxy_on_upstream_data")?,
            downstream_close: typed(store, i, "proxy_on_downstream_connection_close")?,
            upstream_close: typed(store, i, "proxy_on_upstream_connection_close")?,
        })
    }
}

/// Which side of a stream an event is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Downstream to upstream.
    Request,
    /// Upstream to downstream.
    Response,
}

/// A running plugin instance.
pub struct Plugin {
    store: Store<HostState>,
    cb: Callbacks,
    abi: AbiVersion,
    deadline: u64,
    next_context: u32,
}

impl Plugin {
    /// Instantiates `compiled` and runs its initialization (`_initialize`, then `main` if it
    /// exports both; `_start` otherwise). Contexts are not created yet: see [`Plugin::start`].
    pub fn new(compiled: &Compiled, settings: InstanceSettings, shared: Shared) -> Result<Self> {
        let mut store = compiled.new_store(settings, shared);
        let deadline = compiled.host().deadline_ticks();
        store.set_epoch_deadline(deadline);
        let instance = compiled.pre.instantiate(&mut store)?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = match typed::<u32, u32>(&mut store, &instance, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<u32, u32>(&mut store, &instance, "malloc")?,
        };
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let cb = Callbacks::resolve(&mut store, &instance)?;
        let mut plugin = Plugin {
            store,
            cb,
            abi: compiled.abi(),
            deadline,
            next_context: ROOT_CONTEXT + 1,
        };
        let init = typed::<(), ()>(&mut plugin.store, &instance, "_initialize")?;
        if let Some(init) = init {
            plugin.call("_initialize", 0, |s| init.call(s, ()))?;
            if let Some(main) = typed::<(u32, u32), u32>(&mut plugin.store, &instance, "main")? {
                plugin.call("main", 0, |s| main.call(s, (0, 0)))?;
            }
        } else if let Some(start) = typed::<(), ()>(&mut plugin.store, &instance, "_start")? {
            plugin.call("_start", 0, |s| start.call(s, ()))?;
        }
        Ok(plugin)
    }

    /// The module's ABI version.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// The store's data.
    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub(crate) fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Runs one callback with `context` as the effective context, under the deadline.
    fn call<R>(
        &mut self,
        callback: &'static str,
        context: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.store.data_mut().effective = context;
        self.store.set_epoch_deadline(self.deadline);
        f(&mut self.store).map_err(|e| {
            let message = match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => "callback deadline exceeded".to_string(),
                _ => format!("{e:#}"),
            };
            Error::Trap { callback, message }
        })
    }

    /// Creates the root context, then runs `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn start(&mut self) -> Result<()> {
        self.store.data_mut().root_context = ROOT_CONTEXT;
        if let Some(f) = self.cb.context_create.clone() {
            self.call("proxy_on_context_create", ROOT_CONTEXT, |s| {
                f.call(s, (ROOT_CONTEXT, 0))
            })?;
        }
        let vm_len = self.state().settings.vm_config.len() as u32;
        if let Some(f) = self.cb.vm_start.clone() {
            self.store.data_mut().in_vm_start = true;
            let ok = self.call("proxy_on_vm_start", ROOT_CONTEXT, |s| {
                f.call(s, (ROOT_CONTEXT, vm_len))
            });
            self.store.data_mut().in_vm_start = false;
            if ok? == 0 {
                return Err(Error::Rejected { what: "vm" });
            }
        }
        self.configure()
    }

    /// Runs `proxy_on_configure` again, as on a configuration update.
    pub fn configure(&mut self) -> Result<()> {
        let len = self.state().settings.plugin_config.len() as u32;
        if let Some(f) = self.cb.configure.clone() {
            self.store.data_mut().in_configure = true;
            let ok = self.call("proxy_on_configure", ROOT_CONTEXT, |s| {
                f.call(s, (ROOT_CONTEXT, len))
            });
            self.store.data_mut().in_configure = false;
            if ok? == 0 {
                return Err(Error::Rejected { what: "plugin" });
            }
        }
        Ok(())
    }

    /// Replaces the plugin configuration (run [`Plugin::configure`] after).
    pub fn set_plugin_config(&mut self, config: Vec<u8>) {
        self.store.data_mut().settings.plugin_config = config;
    }

    /// Adds a stream's host-side state without telling the plugin.
    pub fn reserve_stream(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        self.store.data_mut().streams.insert(id, Stream::default());
        id
    }

    /// `proxy_on_context_create` for a reserved stream.
    pub fn create_stream_context(&mut self, id: u32) -> Result<()> {
        if let Some(f) = self.cb.context_create.clone() {
            self.call("proxy_on_context_create", id, |s| {
                f.call(s, (id, ROOT_CONTEXT))
            })?;
        }
        Ok(())
    }

    /// Creates an HTTP stream context under the root context.
    pub fn create_stream(&mut self) -> Result<u32> {
        let id = self.reserve_stream();
        self.create_stream_context(id)?;
        Ok(id)
    }

    /// A stream's state.
    pub fn stream(&self, id: u32) -> Option<&Stream> {
        self.state().streams.get(&id)
    }

    pub(crate) fn stream_mut(&mut self, id: u32) -> Result<&mut Stream> {
        self.store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or(Error::NoStream(id))
    }

    /// Delivers headers of one side; `Continue` when the plugin does not export the callback.
    pub fn headers(&mut self, id: u32, side: Side, count: u32, eos: bool) -> Result<Action> {
        let (name, f) = match side {
            Side::Request => ("proxy_on_request_headers", self.cb.request_headers.clone()),
            Side::Response => (
                "proxy_on_response_headers",
                self.cb.response_headers.clone(),
            ),
        };
        let raw = match f {
            None => 0,
            Some(Headers::Eos(f)) => self.call(name, id, |s| f.call(s, (id, count, eos as u32)))?,
            Some(Headers::NoEos(f)) => self.call(name, id, |s| f.call(s, (id, count)))?,
        };
        Ok(Action::from_raw(raw))
    }

    /// Delivers the body the host holds for one side.
    pub fn body(&mut self, id: u32, side: Side, size: u32, eos: bool) -> Result<Action> {
        let (name, f) = match side {
            Side::Request => ("proxy_on_request_body", self.cb.request_body.clone()),
            Side::Response => ("proxy_on_response_body", self.cb.response_body.clone()),
        };
        let raw = match f {
            None => 0,
            Some(f) => self.call(name, id, |s| f.call(s, (id, size, eos as u32)))?,
        };
        Ok(Action::from_raw(raw))
    }

    /// Delivers trailers of one side.
    pub fn trailers(&mut self, id: u32, side: Side, count: u32) -> Result<Action> {
        let (name, f) = match side {
            Side::Request => (
                "proxy_on_request_trailers",
                self.cb.request_trailers.clone(),
            ),
            Side::Response => (
                "proxy_on_response_trailers",
                self.cb.response_trailers.clone(),
            ),
        };
        let raw = match f {
            None => 0,
            Some(f) => self.call(name, id, |s| f.call(s, (id, count)))?,
        };
        Ok(Action::from_raw(raw))
    }

    /// L4: `proxy_on_new_connection`.
    pub fn new_connection(&mut self, id: u32) -> Result<Action> {
        let raw = match self.cb.new_connection.clone() {
            None => 0,
            Some(f) => self.call("proxy_on_new_connection", id, |s| f.call(s, id))?,
        };
        Ok(Action::from_raw(raw))
    }

    /// L4: `proxy_on_downstream_data` or `proxy_on_upstream_data` with the data the host holds.
    pub fn data(&mut self, id: u32, downstream: bool, size: u32, eos: bool) -> Result<Action> {
        let (name, f) = if downstream {
            ("proxy_on_downstream_data", self.cb.downstream_data.clone())
        } else {
            ("proxy_on_upstream_data", self.cb.upstream_data.clone())
        };
        let raw = match f {
            None => 0,
            Some(f) => self.call(name, id, |s| f.call(s, (id, size, eos as u32)))?,
        };
        Ok(Action::from_raw(raw))
    }

    /// L4: a connection closed; `peer` is the spec's peer type (0 unknown, 1 local, 2 remote).
    pub fn connection_close(&mut self, id: u32, downstream: bool, peer: u32) -> Result<()> {
        let (name, f) = if downstream {
            (
                "proxy_on_downstream_connection_close",
                self.cb.downstream_close.clone(),
            )
        } else {
            (
                "proxy_on_upstream_connection_close",
                self.cb.upstream_close.clone(),
            )
        };
        if let Some(f) = f {
            self.call(name, id, |s| f.call(s, (id, peer)))?;
        }
        Ok(())
    }

    /// `proxy_on_done`; true when the plugin lets the context go now.
    pub fn done(&mut self, id: u32) -> Result<bool> {
        match self.cb.done.clone() {
            None => Ok(true),
            Some(f) => Ok(self.call("proxy_on_done", id, |s| f.call(s, id))? != 0),
        }
    }

    /// `proxy_on_log` then `proxy_on_delete`; the caller then drops the stream's state.
    pub fn log_and_delete(&mut self, id: u32) -> Result<()> {
        if let Some(f) = self.cb.log.clone() {
            self.call("proxy_on_log", id, |s| f.call(s, id))?;
        }
        if let Some(f) = self.cb.delete.clone() {
            self.call("proxy_on_delete", id, |s| f.call(s, id))?;
        }
        Ok(())
    }

    /// `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<()> {
        if let Some(f) = self.cb.tick.clone() {
            self.call("proxy_on_tick", ROOT_CONTEXT, |s| f.call(s, ROOT_CONTEXT))?;
        }
        Ok(())
    }

    /// `proxy_on_queue_ready`.
    pub fn queue_ready(&mut self, context: u32, queue: u32) -> Result<()> {
        if let Some(f) = self.cb.queue_ready.clone() {
            self.call("proxy_on_queue_ready", context, |s| {
                f.call(s, (context, queue))
            })?;
        }
        Ok(())
    }

    /// Delivers an HTTP callout's response (`None`: the callout failed or timed out, which
    /// the plugin sees as zero headers).
    pub fn http_call_response(
        &mut self,
        context: u32,
        token: u32,
        response: Option<CalloutResponse>,
    ) -> Result<()> {
        let (h, b, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            )
        });
        let code = response
            .as_ref()
            .and_then(|r| r.headers.get(":status"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let st = self.store.data_mut();
        st.status = (code, Vec::new());
        st.buffers.http_response = Some(response.unwrap_or_default());
        let r = match self.cb.http_call_response.clone() {
            None => Ok(()),
            Some(f) => self.call("proxy_on_http_call_response", context, |s| {
                f.call(s, (context, token, h, b, t))
            }),
        };
        self.store.data_mut().buffers.http_response = None;
        r
    }

    /// Delivers gRPC initial metadata, a message, trailing metadata, or the close, in the
    /// order the caller chooses.
    pub fn grpc_event(&mut self, context: u32, token: u32, event: GrpcEvent) -> Result<()> {
        let (name, f, arg, buffer) = match event {
            GrpcEvent::InitialMetadata(m) => (
                "proxy_on_grpc_receive_initial_metadata",
                self.cb.grpc_initial_metadata.clone(),
                m.len() as u32,
                CalloutResponse {
                    headers: m,
                    ..Default::default()
                },
            ),
            GrpcEvent::Message(b) => (
                "proxy_on_grpc_receive",
                self.cb.grpc_receive.clone(),
                b.len() as u32,
                CalloutResponse {
                    body: b,
                    ..Default::default()
                },
            ),
            GrpcEvent::TrailingMetadata(m) => (
                "proxy_on_grpc_receive_trailing_metadata",
                self.cb.grpc_trailing_metadata.clone(),
                m.len() as u32,
                CalloutResponse {
                    trailers: m,
                    ..Default::default()
                },
            ),
            GrpcEvent::Close { status, message } => {
                self.store.data_mut().status = (status, message.into_bytes());
                (
                    "proxy_on_grpc_close",
                    self.cb.grpc_close.clone(),
                    status,
                    CalloutResponse::default(),
                )
            }
        };
        self.store.data_mut().buffers.grpc = Some(buffer);
        let r = match f {
            None => Ok(()),
            Some(f) => self.call(name, context, |s| f.call(s, (context, token, arg))),
        };
        self.store.data_mut().buffers.grpc = None;
        r
    }

    /// Calls `proxy_on_foreign_function` with `args` readable as FOREIGN_FUNCTION_ARGUMENTS.
    pub fn foreign_function(&mut self, function_id: u32, args: Vec<u8>) -> Result<()> {
        let len = args.len() as u32;
        self.store.data_mut().buffers.foreign_args = Some(args);
        let r = match self.cb.foreign_function.clone() {
            None => Ok(()),
            Some(f) => self.call("proxy_on_foreign_function", ROOT_CONTEXT, |s| {
                f.call(s, (ROOT_CONTEXT, function_id, len))
            }),
        };
        self.store.data_mut().buffers.foreign_args = None;
        r
    }

    /// Moves the virtual clock to `now_ns`.
    pub(crate) fn set_now(&mut self, now_ns: u64) {
        self.store.data_mut().now_ns = now_ns;
    }
}

/// One event of a gRPC callout's response.
#[derive(Debug, Clone)]
pub enum GrpcEvent {
    /// Initial metadata.
    InitialMetadata(crate::state::HeaderMap),
    /// A response message.
    Message(Vec<u8>),
    /// Trailing metadata.
    TrailingMetadata(crate::state::HeaderMap),
    /// The call ended with a gRPC status.
    Close {
        /// gRPC status code.
        status: u32,
        /// gRPC status message.
        message: String,
    },
}
