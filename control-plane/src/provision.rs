//! Resource-group provisioning: the [`Provisioner`] trait that creates, watches, samples and
//! releases the instances behind a group, and the group's recorded configuration.
//!
//! A provisioner is the I/O edge of the shadow lifecycle: it runs processes (or, later, talks to
//! Kubernetes) and reads the clock for its samples, so the migration engine stays a pure
//! function of what the provisioner reports. Two ship:
//!
//! - [`local::LocalProvisioner`], the embedded default: N processes per group on free loopback
//!   ports, supervised (restarted with backoff), sampled from `/proc`;
//! - [`fixed::FixedProvisioner`]: endpoints that exist already (the configuration's static
//!   groups); nothing to start, nothing to sample.
//!
//! The trait is object-safe (`Arc<dyn Provisioner>`): its async methods return boxed futures,
//! so no macro crate is needed and a Kubernetes provisioner can await API calls in them.

// The shadow lifecycle (issue 5) wires this in; until then only the tests use all of it.
#![allow(dead_code)]

pub mod fixed;
pub mod local;
pub mod procfs;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The future a [`Provisioner`] method returns: boxed so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The module's result.
pub type Result<T, E = ProvisionError> = std::result::Result<T, E>;

/// What went wrong provisioning a group. Every message names the group and, where one is
/// involved, the instance and the command.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The spec is wrong whatever the provisioner (a field is empty, a name is bad).
    #[error("group \"{group}\": {field}: {message}")]
    InvalidSpec {
        /// The group.
        group: String,
        /// The field of the spec, e.g. `config.env.PORT`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// This provisioner cannot run what the spec asks for.
    #[error("group \"{group}\": the {provisioner} provisioner does not support {what}")]
    Unsupported {
        /// The group.
        group: String,
        /// The provisioner's [`Provisioner::kind`].
        provisioner: &'static str,
        /// What it does not support.
        what: String,
    },
    /// The group exists with a different configuration.
    #[error("group \"{group}\" already runs another configuration ({differs}); release it first")]
    Conflict {
        /// The group.
        group: String,
        /// Which fields differ.
        differs: String,
    },
    /// The provisioner does not know the group.
    #[error("no group named \"{group}\"")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// An instance's command could not be started at all.
    #[error("group \"{group}\" instance {instance}: cannot run `{command}`: {source}")]
    Spawn {
        /// The group.
        group: String,
        /// The instance's index, from 0.
        instance: u32,
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An instance's command exited before it accepted connections.
    #[error(
        "group \"{group}\" instance {instance}: `{command}` exited ({status}) before accepting \
         connections on 127.0.0.1:{port}{}",
        stderr_suffix(.stderr)
    )]
    ExitedEarly {
        /// The group.
        group: String,
        /// The instance's index, from 0.
        instance: u32,
        /// The command line.
        command: String,
        /// Its exit status, as the OS describes it.
        status: String,
        /// The loopback port it should have listened on.
        port: u16,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// An instance did not accept connections in time (it was killed).
    #[error(
        "group \"{group}\" instance {instance}: `{command}` did not accept connections on \
         127.0.0.1:{port} within {timeout_ms} ms{}",
        stderr_suffix(.stderr)
    )]
    NotReady {
        /// The group.
        group: String,
        /// The instance's index, from 0.
        instance: u32,
        /// The command line.
        command: String,
        /// The loopback port it should have listened on.
        port: u16,
        /// How long it was given.
        timeout_ms: u64,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// No free loopback port for an instance.
    #[error("group \"{group}\" instance {instance}: no free port on 127.0.0.1: {source}")]
    NoPort {
        /// The group.
        group: String,
        /// The instance's index, from 0.
        instance: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The provisioner itself failed (a task it relies on ended).
    #[error("group \"{group}\": {message}")]
    Internal {
        /// The group.
        group: String,
        /// What happened.
        message: String,
    },
    /// Reading `/proc` failed for a reason other than a process going away.
    #[error("group \"{group}\": cannot read {path}: {source}")]
    Proc {
        /// The group.
        group: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with: {}", stderr.trim_end())
    }
}

/// A provisioner of resource groups. Methods take `&self`: a provisioner is shared
/// (`Arc<dyn Provisioner>`) by the lifecycle, the status API and the EDS feed.
pub trait Provisioner: Send + Sync {
    /// Its name in status output and errors: `local`, `fixed`.
    fn kind(&self) -> &'static str;

    /// Creates the group `spec` describes, or adopts it when it exists with the same
    /// configuration, and returns once its instances serve (or with the first failure, having
    /// cleaned up what it started). A group that exists with another configuration is a
    /// [`ProvisionError::Conflict`].
    fn ensure<'a>(&'a self, spec: &'a GroupSpec) -> BoxFuture<'a, Result<GroupHandle>>;

    /// The group's healthy instances now, for EDS; empty for an unknown group.
    fn endpoints(&self, group: &GroupHandle) -> Vec<SocketAddr>;

    /// One sample of the group's system metrics; what a provisioner cannot see is `None`.
    fn system_metrics<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<SystemSample>>;

    /// Stops the group's instances and forgets it. Releasing a group that is not there
    /// succeeds: it is released already.
    fn release<'a>(&'a self, group: &'a GroupHandle) -> BoxFuture<'a, Result<()>>;

    /// The configuration the group was ensured with.
    fn recorded(&self, group: &GroupHandle) -> Option<RecordedConfig>;

    /// The group and its instances, for the status API.
    fn status(&self, group: &GroupHandle) -> Option<GroupStatus>;
}

/// A group a provisioner runs. Serializable, so the lifecycle can store it and ask again
/// after a restart (`ensure` adopts a group that is still there).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupHandle {
    /// The group's name (its Envoy cluster).
    pub name: String,
}

impl GroupHandle {
    /// The handle of the group named `name`.
    pub fn new(name: impl Into<String>) -> GroupHandle {
        GroupHandle { name: name.into() }
    }
}

/// What to provision: a named group and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's name: its Envoy cluster name (letters, digits, `-`, `_`, `.`). Required.
    pub name: String,
    /// Its configuration. Required.
    pub config: RecordedConfig,
}

/// A group's configuration as recorded: what runs, which version, how many, on what.
/// A shadow's is the primary's, [`mirror`]ed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedConfig {
    /// What each instance runs: `{command: {program, args}}` or `{image: REF}`. Required.
    // A one-key map in YAML too (serde_yaml_ng would otherwise want a `!command` tag); JSON
    // writes enums this way already.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub workload: Workload,
    /// The workload's version (a build id, an image tag), recorded as given. Default: empty.
    #[serde(default)]
    pub version: String,
    /// How many instances. Default: 1. Zero is a group with no instances (scaled to zero).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// The instance type: a machine size for a cloud provisioner; only recorded by the local
    /// one. Default: `standard`.
    #[serde(default = "default_class")]
    pub instance_type: String,
    /// The price class, e.g. `standard` (on demand) or `spot`; only recorded by the local
    /// provisioner. Default: `standard`.
    #[serde(default = "default_class")]
    pub price_class: String,
    /// Environment variables of every instance, on top of the provisioner's own. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ports the workload listens on inside its instance (a container's), the first carrying
    /// traffic. Default: none, and the provisioner picks: the local one gives each instance a
    /// free loopback port (it refuses fixed ports, which N instances on one host cannot share).
    #[serde(default)]
    pub ports: Vec<u16>,
}

fn default_instances() -> u32 {
    1
}

fn default_class() -> String {
    "standard".to_string()
}

/// What an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// A program, run directly (no shell). In `args`, the local provisioner replaces `{port}`,
    /// `{group}` and `{instance}` with the instance's port, group name and index.
    Command {
        /// The program: a path, or a name looked up in `PATH`. Required.
        program: String,
        /// Its arguments. Default: none.
        #[serde(default)]
        args: Vec<String>,
    },
    /// A container image reference, for container provisioners.
    Image(String),
}

impl Workload {
    /// The command line for messages (`program arg arg`), or the image.
    pub fn display(&self) -> String {
        match self {
            Workload::Command { program, args } => {
                let mut s = program.clone();
                for a in args {
                    s.push(' ');
                    if a.is_empty() || a.contains(char::is_whitespace) {
                        s.push_str(&format!("{a:?}"));
                    } else {
                        s.push_str(a);
                    }
                }
                s
            }
            Workload::Image(image) => format!("image {image}"),
        }
    }
}

/// What a shadow may run differently from its primary: another instance type or price class
/// (a cheaper machine, spot capacity). Everything else is mirrored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The shadow's instance type. Default: the primary's.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// The shadow's price class. Default: the primary's.
    #[serde(default)]
    pub price_class: Option<String>,
}

/// The shadow's configuration for a primary's: the same workload, version, instance count,
/// environment and ports, on the `variant`'s instance type and price class where it sets them.
pub fn mirror(primary: &RecordedConfig, variant: Option<&Variant>) -> RecordedConfig {
    let mut shadow = primary.clone();
    if let Some(v) = variant {
        if let Some(t) = &v.instance_type {
            shadow.instance_type = t.clone();
        }
        if let Some(p) = &v.price_class {
            shadow.price_class = p.clone();
        }
    }
    shadow
}

/// The most instances a spec may ask for: a guard against a typo starting thousands.
pub const MAX_INSTANCES: u32 = 1024;

impl GroupSpec {
    /// Checks what every provisioner needs: a valid name, a non-empty program or image,
    /// environment names without `=` or NUL, no NUL anywhere, class names, and a sane count.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, message: &str| ProvisionError::InvalidSpec {
            group: self.name.clone(),
            field: field.to_string(),
            message: message.to_string(),
        };
        if !crate::config::is_name(&self.name) {
            return Err(bad(
                "name",
                "not a valid group name (letters, digits, - _ ., at most 64)",
            ));
        }
        let c = &self.config;
        match &c.workload {
            Workload::Command { program, args } => {
                if program.is_empty() {
                    return Err(bad("config.workload.command.program", "must not be empty"));
                }
                if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
                    return Err(bad("config.workload.command", "contains a NUL byte"));
                }
            }
            Workload::Image(image) => {
                if image.is_empty() || image.contains(char::is_whitespace) {
                    return Err(bad(
                        "config.workload.image",
                        "must be a non-empty image reference without spaces",
                    ));
                }
            }
        }
        if c.version.contains('\0') {
            return Err(bad("config.version", "contains a NUL byte"));
        }
        if c.instances > MAX_INSTANCES {
            return Err(bad(
                "config.instances",
                &format!("{} is above {MAX_INSTANCES}", c.instances),
            ));
        }
        for (field, v) in [
            ("config.instance_type", &c.instance_type),
            ("config.price_class", &c.price_class),
        ] {
            if !crate::config::is_name(v) {
                return Err(bad(
                    field,
                    &format!("\"{v}\" is not a valid class name (letters, digits, - _ .)"),
                ));
            }
        }
        for (k, v) in &c.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(
                    &format!("config.env.{k}"),
                    "a variable name must be non-empty, without = or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(bad(&format!("config.env.{k}"), "contains a NUL byte"));
            }
        }
        if c.ports.contains(&0) {
            return Err(bad("config.ports", "port 0 is not a port"));
        }
        Ok(())
    }
}

/// The fields in which two configurations differ, for [`ProvisionError::Conflict`].
pub fn differences(a: &RecordedConfig, b: &RecordedConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.workload != b.workload {
        out.push("workload");
    }
    if a.version != b.version {
        out.push("version");
    }
    if a.instances != b.instances {
        out.push("instances");
    }
    if a.instance_type != b.instance_type {
        out.push("instance_type");
    }
    if a.price_class != b.price_class {
        out.push("price_class");
    }
    if a.env != b.env {
        out.push("env");
    }
    if a.ports != b.ports {
        out.push("ports");
    }
    out
}

/// One sample of a group's system metrics, summed over its processes. What the provisioner
/// cannot see is `None`, never a made-up zero.
///
/// Counters (`cpu_seconds`, `page_faults`, disk and network bytes) are cumulative since the
/// group was provisioned and do not fall when an instance restarts: a process that went away
/// keeps counting with its last sampled values (what it did after its last sample is lost).
/// Rates are the consumer's business, except `cpu_cores`, averaged over `interval_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSample {
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The interval `cpu_cores` averages over: since this group's previous sample, or since it
    /// was provisioned. Milliseconds.
    pub interval_ms: u64,
    /// How many processes were sampled (instances and their children).
    pub processes: u32,
    /// CPU used over the interval, in cores (1.0 = one core busy all the time).
    pub cpu_cores: Option<f64>,
    /// CPU time used (user + system), seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory now, bytes.
    pub rss_bytes: Option<u64>,
    /// Page faults, minor and major.
    pub page_faults: Option<u64>,
    /// Bytes read from storage (not page-cache hits).
    pub disk_read_bytes: Option<u64>,
    /// Bytes written to storage (as submitted to the block layer).
    pub disk_write_bytes: Option<u64>,
    /// Bytes received from the network.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent to the network.
    pub net_tx_bytes: Option<u64>,
}

/// A group as a provisioner sees it, for the status API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// The provisioner's [`Provisioner::kind`].
    pub provisioner: &'static str,
    /// Its recorded configuration.
    pub config: RecordedConfig,
    /// Its instances, by index.
    pub instances: Vec<InstanceStatus>,
}

/// One instance of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStatus {
    /// Its index in the group, from 0.
    pub index: u32,
    /// What it is doing.
    pub state: InstanceState,
    /// Where it serves (or will).
    pub addr: Option<SocketAddr>,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// How often it was restarted after a crash.
    pub restarts: u32,
    /// How its last run ended (exit status and the end of its stderr), if it ended.
    pub last_exit: Option<String>,
}

/// What an instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Started, not accepting connections yet.
    Starting,
    /// Accepting connections: in the endpoints.
    Ready,
    /// Running but failing its probes: out of the endpoints until it passes again.
    Unhealthy,
    /// Exited; waiting out the backoff before it is started again.
    Restarting,
    /// Stopped for good (released, or failed its first start).
    Stopped,
    /// Not run by this provisioner; its health is not known here (Envoy's checks know).
    External,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> RecordedConfig {
        RecordedConfig {
            workload: Workload::Command {
                program: "checkout".into(),
                args: vec!["--port".into(), "{port}".into()],
            },
            version: "2024.06.1".into(),
            instances: 3,
            instance_type: "c6i.large".into(),
            price_class: "standard".into(),
            env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
            ports: vec![],
        }
    }

    #[test]
    fn mirror_copies_everything_without_a_variant() {
        assert_eq!(mirror(&primary(), None), primary());
        assert_eq!(mirror(&primary(), Some(&Variant::default())), primary());
    }

    #[test]
    fn mirror_takes_the_variants_type_and_price_class_only() {
        let v = Variant {
            instance_type: Some("c6i.xlarge".into()),
            price_class: Some("spot".into()),
        };
        let shadow = mirror(&primary(), Some(&v));
        assert_eq!(shadow.instance_type, "c6i.xlarge");
        assert_eq!(shadow.price_class, "spot");
        assert_eq!(
            differences(&primary(), &shadow),
            ["instance_type", "price_class"]
        );

        let only_spot = Variant {
            instance_type: None,
            price_class: Some("spot".into()),
        };
        let shadow = mirror(&primary(), Some(&only_spot));
        assert_eq!(shadow.instance_type, "c6i.large");
        assert_eq!(differences(&primary(), &shadow), ["price_class"]);
    }

    #[test]
    fn config_round_trips_through_json_and_yaml() {
        let spec = GroupSpec {
            name: "checkout-blue".into(),
            config: primary(),
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<GroupSpec>(&json).unwrap(), spec);
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert!(
            yaml.contains("workload:\n    command:\n      program: checkout\n"),
            "{yaml}"
        );
        assert_eq!(serde_yaml_ng::from_str::<GroupSpec>(&yaml).unwrap(), spec);

        let image = RecordedConfig {
            workload: Workload::Image("ghcr.io/acme/checkout:1.2".into()),
            ..primary()
        };
        let json = serde_json::to_value(&image).unwrap();
        assert_eq!(json["workload"]["image"], "ghcr.io/acme/checkout:1.2");
        assert_eq!(
            serde_json::from_value::<RecordedConfig>(json).unwrap(),
            image
        );

        let handle = GroupHandle::new("checkout-blue");
        let json = serde_json::to_string(&handle).unwrap();
        assert_eq!(json, r#"{"name":"checkout-blue"}"#);
        assert_eq!(serde_json::from_str::<GroupHandle>(&json).unwrap(), handle);

        let sample = SystemSample {
            at_ms: 7,
            cpu_cores: Some(0.25),
            rss_bytes: Some(1 << 20),
            ..SystemSample::default()
        };
        let json = serde_json::to_string(&sample).unwrap();
        assert_eq!(serde_json::from_str::<SystemSample>(&json).unwrap(), sample);
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: RecordedConfig =
            serde_yaml_ng::from_str("workload: {command: {program: ./svc}}\n").unwrap();
        assert_eq!(c.instances, 1);
        assert_eq!(c.instance_type, "standard");
        assert_eq!(c.price_class, "standard");
        assert_eq!(c.version, "");
        assert!(c.env.is_empty() && c.ports.is_empty());
        assert_eq!(
            c.workload,
            Workload::Command {
                program: "./svc".into(),
                args: vec![]
            }
        );

        let e = serde_yaml_ng::from_str::<RecordedConfig>(
            "workload: {command: {program: ./svc}}\ncolour: red\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = serde_yaml_ng::from_str::<RecordedConfig>(
            "workload: {command: {program: ./svc, argz: []}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `argz`"), "{e}");
    }

    #[test]
    fn check_names_the_group_and_field() {
        let spec = |f: &dyn Fn(&mut GroupSpec)| {
            let mut s = GroupSpec {
                name: "checkout-blue".into(),
                config: primary(),
            };
            f(&mut s);
            s.check().map_err(|e| e.to_string())
        };
        assert!(spec(&|_| {}).is_ok());
        type Edit = dyn Fn(&mut GroupSpec);
        let cases: [(&Edit, &str); 6] = [
            (
                &|s| s.name = "a b".into(),
                "group \"a b\": name: not a valid group name",
            ),
            (
                &|s| {
                    s.config.workload = Workload::Command {
                        program: String::new(),
                        args: vec![],
                    }
                },
                "group \"checkout-blue\": config.workload.command.program: must not be empty",
            ),
            (
                &|s| {
                    s.config.env.insert("A=B".into(), "x".into());
                },
                "group \"checkout-blue\": config.env.A=B: a variable name",
            ),
            (
                &|s| s.config.price_class = "on demand".into(),
                "group \"checkout-blue\": config.price_class: \"on demand\" is not a valid",
            ),
            (
                &|s| s.config.instances = MAX_INSTANCES + 1,
                "group \"checkout-blue\": config.instances: 1025 is above 1024",
            ),
            (
                &|s| s.config.ports = vec![0],
                "group \"checkout-blue\": config.ports: port 0",
            ),
        ];
        for (f, want) in cases {
            let e = spec(f).unwrap_err();
            assert!(e.starts_with(want), "want {want}\n got {e}");
        }
    }

    #[test]
    fn workload_display_quotes_arguments_with_spaces() {
        let w = Workload::Command {
            program: "python3".into(),
            args: vec!["-c".into(), "print(1 + 1)".into(), String::new()],
        };
        assert_eq!(w.display(), r#"python3 -c "print(1 + 1)" """#);
        assert_eq!(Workload::Image("x:1".into()).display(), "image x:1");
    }

    #[test]
    fn the_trait_is_object_safe() {
        let p: std::sync::Arc<dyn Provisioner> =
            std::sync::Arc::new(fixed::FixedProvisioner::new([]));
        assert_eq!(p.kind(), "fixed");
    }
}
