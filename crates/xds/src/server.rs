//! The gRPC edge: ADS (SotW and delta) and the per-type discovery services over one cache.

mod contents;
mod delta;
mod driver;
mod plan;
mod sotw;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use futures::stream::BoxStream;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::SnapshotCache;
use crate::error::{Error, Result};
use crate::resource::ResourceType;

/// HTTP/2 keepalive: ping an idle connection every 30 s and drop it if the ping is not answered
/// in 10 s, so a vanished Envoy's stream (and its place in the sync count) goes away quickly.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The one conversion of this crate's errors into gRPC statuses.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::MissingNode | Error::WrongType { .. } => Status::invalid_argument(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

/// The discovery services over `cache`, to mount on a tonic server of your own: ADS
/// (SotW and delta) and CDS, EDS, LDS, RDS, ECDS.
///
/// xDS streams only end when clients leave, so a graceful shutdown of a server carrying these
/// routes waits for every Envoy to go; use [`xds_routes_with_shutdown`] (or [`serve`]) to end
/// the streams on shutdown.
pub fn xds_routes(cache: SnapshotCache) -> Routes {
    let (tx, rx) = watch::channel(false);
    // A dropped sender means "never": `Shutdown::wait` treats it so.
    drop(tx);
    routes(cache, Shutdown(rx))
}

/// Like [`xds_routes`], but every stream ends (with status OK, so Envoy reconnects elsewhere)
/// once `shutdown` holds `true`.
pub fn xds_routes_with_shutdown(cache: SnapshotCache, shutdown: watch::Receiver<bool>) -> Routes {
    routes(cache, Shutdown(shutdown))
}

fn routes(cache: SnapshotCache, shutdown: Shutdown) -> Routes {
    let svc = Services { cache, shutdown };
    Routes::new(AggregatedDiscoveryServiceServer::new(svc.clone()))
        .add_service(ClusterDiscoveryServiceServer::new(svc.clone()))
        .add_service(EndpointDiscoveryServiceServer::new(svc.clone()))
        .add_service(ListenerDiscoveryServiceServer::new(svc.clone()))
        .add_service(RouteDiscoveryServiceServer::new(svc.clone()))
        .add_service(ExtensionConfigDiscoveryServiceServer::new(svc))
}

/// Serves the discovery services on an already-bound listener until `shutdown` completes;
/// then ends every xDS stream and returns once the connections are drained.
pub async fn serve(
    cache: SnapshotCache,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_with(cache, listener, shutdown, |routes| routes).await
}

/// [`serve`], with more gRPC services on the same port: `extend` adds them to the xDS routes
/// (for example the metrics service Envoy's stats sink streams to over the same cluster).
pub async fn serve_with(
    cache: SnapshotCache,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    extend: impl FnOnce(Routes) -> Routes,
) -> Result<()> {
    let (tx, rx) = watch::channel(false);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let signal = async move {
        shutdown.await;
        // Nobody listening is fine: then no stream is open.
        let _ = tx.send(true);
    };
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(extend(xds_routes_with_shutdown(cache, rx)))
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// Which types a stream may carry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    Ads,
    Single(ResourceType),
}

impl Scope {
    /// The type of a request: `None` for a type ADS does not serve (ignored, warned once per
    /// stream, so Envoy subscribing e.g. to secrets over ADS does not break the stream).
    fn resolve(
        self,
        type_url: &str,
        warned: &mut BTreeSet<String>,
    ) -> Result<Option<ResourceType>> {
        match self {
            Scope::Ads => {
                let t = ResourceType::from_type_url(type_url);
                if t.is_none() && warned.insert(type_url.to_owned()) {
                    tracing::warn!(
                        type_url,
                        "ignoring a subscription to a type this server does not serve"
                    );
                }
                Ok(t)
            }
            Scope::Single(t) if type_url.is_empty() || type_url == t.type_url() => Ok(Some(t)),
            Scope::Single(t) => Err(Error::WrongType {
                expected: t.type_url(),
                got: type_url.to_owned(),
            }),
        }
    }
}

/// Ends streams on server shutdown.
#[derive(Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown began (never if the sender is gone without saying so). Cancel-safe.
    async fn wait(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[derive(Clone)]
struct Services {
    cache: SnapshotCache,
    shutdown: Shutdown,
}

type SotwStream = BoxStream<'static, std::result::Result<DiscoveryResponse, Status>>;
type DeltaStream = BoxStream<'static, std::result::Result<DeltaDiscoveryResponse, Status>>;

impl Services {
    fn sotw(
        &self,
        scope: Scope,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Response<SotwStream> {
        let s = sotw::SotwStream::new(
            self.cache.clone(),
            scope,
            req.into_inner(),
            self.shutdown.clone(),
        );
        Response::new(s.into_stream())
    }

    fn delta(
        &self,
        scope: Scope,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Response<DeltaStream> {
        let s = delta::DeltaStream::new(
            self.cache.clone(),
            scope,
            req.into_inner(),
            self.shutdown.clone(),
        );
        Response::new(s.into_stream())
    }
}

fn fetch_unsupported() -> Status {
    Status::unimplemented("fetch is not supported; use streaming xDS")
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Services {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> std::result::Result<Response<SotwStream>, Status> {
        Ok(self.sotw(Scope::Ads, request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> std::result::Result<Response<DeltaStream>, Status> {
        Ok(self.delta(Scope::Ads, request))
    }
}

/// Implements one per-type discovery service: its SotW and delta streams serve that one type.
macro_rules! per_type_service {
    ($trait:ident, $t:expr, $stream:ident, $sotw_ty:ident, $delta:ident, $delta_ty:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for Services {
            type $sotw_ty = SotwStream;
            type $delta_ty = DeltaStream;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> std::result::Result<Response<SotwStream>, Status> {
                Ok(self.sotw(Scope::Single($t), request))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> std::result::Result<Response<DeltaStream>, Status> {
                Ok(self.delta(Scope::Single($t), request))
            }

            async fn $fetch(
                &self,
                _request: Request<DiscoveryRequest>,
            ) -> std::result::Result<Response<DiscoveryResponse>, Status> {
                Err(fetch_unsupported())
            }
        }
    };
}

per_type_service!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    stream_clusters,
    StreamClustersStream,
    delta_clusters,
    DeltaClustersStream,
    fetch_clusters
);
per_type_service!(
    EndpointDiscoveryService,
    ResourceType::Endpoint,
    stream_endpoints,
    StreamEndpointsStream,
    delta_endpoints,
    DeltaEndpointsStream,
    fetch_endpoints
);
per_type_service!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    stream_listeners,
    StreamListenersStream,
    delta_listeners,
    DeltaListenersStream,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    ResourceType::Route,
    stream_routes,
    StreamRoutesStream,
    delta_routes,
    DeltaRoutesStream,
    fetch_routes
);
per_type_service!(
    ExtensionConfigDiscoveryService,
    ResourceType::ExtensionConfig,
    stream_extension_configs,
    StreamExtensionConfigsStream,
    delta_extension_configs,
    DeltaExtensionConfigsStream,
    fetch_extension_configs
);
