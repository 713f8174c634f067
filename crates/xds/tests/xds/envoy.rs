//! A scripted Envoy: envoy-types' generated tonic clients over loopback, driven by the test.
//!
//! Like Envoy, it sends the node on the first request of a stream only, echoes the version it
//! accepted and the nonce of the response it answers, and carries the current subscription in
//! every SotW request. Every wait is bounded so a broken server fails a test instead of hanging it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use shadowplane_xds::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(5);

pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        ..Default::default()
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("a valid uri");
    tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The name inside an encoded resource.
pub fn name_of(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match ResourceType::from_type_url(&any.type_url) {
        Some(ResourceType::Cluster) => Cluster::decode(bytes).expect("cluster").name,
        Some(ResourceType::Endpoint) => {
            ClusterLoadAssignment::decode(bytes)
                .expect("endpoints")
                .cluster_name
        }
        Some(ResourceType::Listener) => Listener::decode(bytes).expect("listener").name,
        Some(ResourceType::Route) => RouteConfiguration::decode(bytes).expect("route").name,
        Some(ResourceType::ExtensionConfig) => {
            TypedExtensionConfig::decode(bytes)
                .expect("extension config")
                .name
        }
        None => panic!("unexpected type {}", any.type_url),
    }
}

/// The clusters a route configuration sends traffic to.
pub fn routed_clusters(any: &Any) -> Vec<String> {
    let rc = RouteConfiguration::decode(any.value.as_slice()).expect("route");
    let mut out = Vec::new();
    for vh in rc.virtual_hosts {
        for r in vh.routes {
            if let Some(route::Action::Route(a)) = r.action {
                match a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => out.push(c),
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.into_iter().map(|c| c.name))
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

pub fn short(type_url: &str) -> &'static str {
    ResourceType::from_type_url(type_url)
        .map(|t| match t {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::ExtensionConfig => "ECDS",
        })
        .unwrap_or("?")
}

/// `CDS v2+mbb [a b c]`: one line per SotW response, for transcripts.
pub fn line(r: &DiscoveryResponse) -> String {
    let names: Vec<String> = r.resources.iter().map(name_of).collect();
    format!(
        "{} {} [{}]",
        short(&r.type_url),
        r.version_info,
        names.join(" ")
    )
}

/// `CDS v2 +[c] -[b]`: one line per delta response.
pub fn delta_line(r: &DeltaDiscoveryResponse) -> String {
    let names: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    format!(
        "{} {} +[{}] -[{}]",
        short(&r.type_url),
        r.system_version_info,
        names.join(" "),
        r.removed_resources.join(" ")
    )
}

enum SotwApi {
    Ads,
    Cds,
    Lds,
}

/// A SotW client (ADS or a per-type stream).
pub struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
    names: HashMap<ResourceType, Vec<String>>,
    accepted: HashMap<ResourceType, String>,
    answered: HashMap<ResourceType, String>,
}

impl Sotw {
    pub async fn ads(addr: SocketAddr, node: Node) -> Sotw {
        Self::open(addr, node, SotwApi::Ads).await
    }

    pub async fn cds(addr: SocketAddr, node: Node) -> Sotw {
        Self::open(addr, node, SotwApi::Cds).await
    }

    pub async fn lds(addr: SocketAddr, node: Node) -> Sotw {
        Self::open(addr, node, SotwApi::Lds).await
    }

    async fn open(addr: SocketAddr, node: Node, api: SotwApi) -> Sotw {
        let ch = channel(addr).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = UnboundedReceiverStream::new(rx);
        let call = async {
            match api {
                SotwApi::Ads => {
                    AggregatedDiscoveryServiceClient::new(ch)
                        .stream_aggregated_resources(requests)
                        .await
                }
                SotwApi::Cds => {
                    ClusterDiscoveryServiceClient::new(ch)
                        .stream_clusters(requests)
                        .await
                }
                SotwApi::Lds => {
                    ListenerDiscoveryServiceClient::new(ch)
                        .stream_listeners(requests)
                        .await
                }
            }
        };
        // tonic returns once the server answered with headers, which it does at once; the
        // first request goes out when the test subscribes.
        let rx = tokio::time::timeout(WAIT, call)
            .await
            .expect("stream opened in time")
            .expect("stream opened")
            .into_inner();
        Sotw {
            tx,
            rx,
            node: Some(node),
            names: HashMap::new(),
            accepted: HashMap::new(),
            answered: HashMap::new(),
        }
    }

    fn request(&mut self, t: ResourceType) -> DiscoveryRequest {
        DiscoveryRequest {
            node: self.node.take(),
            type_url: t.type_url().into(),
            resource_names: self.names.get(&t).cloned().unwrap_or_default(),
            version_info: self.accepted.get(&t).cloned().unwrap_or_default(),
            response_nonce: self.answered.get(&t).cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).expect("stream open");
    }

    /// Asks for `names` of type `t` (a subscription change carries the last answered nonce,
    /// as Envoy's do).
    pub fn subscribe(&mut self, t: ResourceType, names: &[&str]) {
        self.names
            .insert(t, names.iter().map(|s| s.to_string()).collect());
        let req = self.request(t);
        self.send(req);
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("the server ended the stream"),
            Ok(Err(status)) => panic!("the server failed the stream: {status}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    /// The stream's end: `Ok(())` for a clean end, the status otherwise.
    pub async fn end(&mut self) -> Result<(), tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(r))) => panic!("expected the end, got {}", line(&r)),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("the stream did not end within {WAIT:?}"),
        }
    }

    /// Asserts nothing arrives for a while.
    pub async fn silent(&mut self, ms: u64) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), self.rx.message()).await {
            match r {
                Ok(Some(r)) => panic!("expected silence, got {}", line(&r)),
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    fn type_of(r: &DiscoveryResponse) -> ResourceType {
        ResourceType::from_type_url(&r.type_url).expect("a served type")
    }

    pub fn ack(&mut self, r: &DiscoveryResponse) {
        let t = Self::type_of(r);
        self.accepted.insert(t, r.version_info.clone());
        self.answered.insert(t, r.nonce.clone());
        let req = self.request(t);
        self.send(req);
    }

    pub fn nack(&mut self, r: &DiscoveryResponse, message: &str) {
        let t = Self::type_of(r);
        self.answered.insert(t, r.nonce.clone());
        let mut req = self.request(t);
        req.error_detail = Some(RpcStatus {
            code: 3,
            message: message.into(),
            details: vec![],
        });
        self.send(req);
    }

    /// Receives one response of type `t` and ACKs it.
    pub async fn recv_ack(&mut self, t: ResourceType) -> DiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(Self::type_of(&r), t, "got {}", line(&r));
        self.ack(&r);
        r
    }
}

/// A delta client (ADS or per-type), keeping what it holds like Envoy does.
pub struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
    /// Per type, name to version of what was ACKed.
    pub held: HashMap<ResourceType, BTreeMap<String, String>>,
}

impl Delta {
    pub async fn ads(addr: SocketAddr, node: Node) -> Delta {
        Self::open(addr, node, false).await
    }

    /// Delta over the per-type cluster service (CDS only).
    pub async fn cds(addr: SocketAddr, node: Node) -> Delta {
        Self::open(addr, node, true).await
    }

    async fn open(addr: SocketAddr, node: Node, cds: bool) -> Delta {
        let ch = channel(addr).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = UnboundedReceiverStream::new(rx);
        let call = async {
            if cds {
                ClusterDiscoveryServiceClient::new(ch)
                    .delta_clusters(requests)
                    .await
            } else {
                AggregatedDiscoveryServiceClient::new(ch)
                    .delta_aggregated_resources(requests)
                    .await
            }
        };
        let rx = tokio::time::timeout(WAIT, call)
            .await
            .expect("stream opened in time")
            .expect("stream opened")
            .into_inner();
        Delta {
            tx,
            rx,
            node: Some(node),
            held: HashMap::new(),
        }
    }

    pub fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        req.node = self.node.take();
        self.tx.send(req).expect("stream open");
    }

    pub fn subscribe(&mut self, t: ResourceType, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }

    /// The first request of a type on a new stream, telling what it still holds.
    pub fn resubscribe(
        &mut self,
        t: ResourceType,
        names: &[&str],
        held: &BTreeMap<String, String>,
    ) {
        self.held.insert(t, held.clone());
        self.send(DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: held.clone().into_iter().collect(),
            ..Default::default()
        });
    }

    pub fn unsubscribe(&mut self, t: ResourceType, names: &[&str]) {
        if let Some(h) = self.held.get_mut(&t) {
            for n in names {
                h.remove(*n);
            }
        }
        self.send(DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_unsubscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("the server ended the stream"),
            Ok(Err(status)) => panic!("the server failed the stream: {status}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn silent(&mut self, ms: u64) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), self.rx.message()).await {
            match r {
                Ok(Some(r)) => panic!("expected silence, got {}", delta_line(&r)),
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        let t = ResourceType::from_type_url(&r.type_url).expect("a served type");
        let held = self.held.entry(t).or_default();
        for res in &r.resources {
            held.insert(res.name.clone(), res.version.clone());
        }
        for name in &r.removed_resources {
            held.remove(name);
        }
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
    }

    pub fn nack(&mut self, r: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        });
    }

    pub async fn recv_ack(&mut self, t: ResourceType) -> DeltaDiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(r.type_url, t.type_url(), "got {}", delta_line(&r));
        self.ack(&r);
        r
    }
}
