//! The proxy-wasm ABI's enumerations and its serialization of header maps, as the v0.2.1 spec
//! defines them (proxy-wasm/spec, abi-versions/v0.2.1).

/// `proxy_status_t`: what every host function returns to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key, map, queue, metric or callout does not exist.
    NotFound = 1,
    /// An argument is out of range or unknown.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed (also: unknown gRPC upstream).
    ParseFailure = 4,
    /// A pointer or length falls outside the guest's memory.
    InvalidMemoryAccess = 6,
    /// Nothing to dequeue.
    Empty = 7,
    /// The compare-and-swap value did not match.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// The host does not implement the function.
    Unimplemented = 12,
}

/// `proxy_action_t`: what a stream callback asks the host to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Go on processing.
    Continue,
    /// Stop iteration until the plugin calls `proxy_continue_stream` (Envoy's StopIteration).
    Pause,
}

impl Action {
    /// Envoy treats every non-zero value as a stop.
    pub fn from_raw(v: u32) -> Self {
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// `proxy_map_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// Request headers.
    RequestHeaders,
    /// Request trailers.
    RequestTrailers,
    /// Response headers.
    ResponseHeaders,
    /// Response trailers.
    ResponseTrailers,
    /// Initial metadata of a gRPC callout's response.
    GrpcInitialMetadata,
    /// Trailing metadata of a gRPC callout's response.
    GrpcTrailingMetadata,
    /// Headers of an HTTP callout's response.
    HttpCallResponseHeaders,
    /// Trailers of an HTTP callout's response.
    HttpCallResponseTrailers,
}

impl MapType {
    /// `None` for an id the spec does not define.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// Request body.
    RequestBody,
    /// Response body.
    ResponseBody,
    /// L4 data from downstream.
    DownstreamData,
    /// L4 data from upstream.
    UpstreamData,
    /// Body of an HTTP callout's response.
    HttpCallResponseBody,
    /// Message of a gRPC callout's response.
    GrpcReceiveBuffer,
    /// The VM configuration.
    VmConfiguration,
    /// The plugin configuration.
    PluginConfiguration,
    /// Arguments of a foreign function call into the plugin.
    ForeignFunctionArguments,
}

impl BufferType {
    /// `None` for an id the spec does not define.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::ForeignFunctionArguments,
            _ => return None,
        })
    }
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Settable gauge.
    Gauge,
    /// Distribution of recorded samples.
    Histogram,
}

impl MetricType {
    /// `None` for an id the spec does not define.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// `proxy_log_level_t`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// 0.
    Trace,
    /// 1.
    Debug,
    /// 2.
    Info,
    /// 3.
    Warn,
    /// 4.
    Error,
    /// 5.
    Critical,
}

impl LogLevel {
    /// `None` for a level the spec does not define.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn raw(self) -> u32 {
        self as u32
    }
}

/// The ABI version a module was built for, read from its `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_1_0`.
    V0_1_0,
    /// `proxy_abi_version_0_2_0`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1`.
    V0_2_1,
}

impl AbiVersion {
    /// The newest version among a module's export names.
    pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut best = None;
        for name in exports {
            let v = match name {
                "proxy_abi_version_0_2_1" => AbiVersion::V0_2_1,
                "proxy_abi_version_0_2_0" => AbiVersion::V0_2_0,
                "proxy_abi_version_0_1_0" => AbiVersion::V0_1_0,
                _ => continue,
            };
            if best.is_none_or(|b| v as u8 > b as u8) {
                best = Some(v);
            }
        }
        best
    }
}

/// Header names and values as they cross the ABI.
pub type Pairs = Vec<(String, String)>;

/// Serializes pairs as the spec's map encoding: count, then key/value lengths, then the
/// NUL-terminated keys and values.
pub fn serialize_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let n = pairs.clone().count();
    let mut out = Vec::with_capacity(4 + n * 8);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    let mut bytes = 0;
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        bytes += k.len() + v.len() + 2;
    }
    out.reserve(bytes);
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the map encoding; `None` when the lengths do not fit the data. An empty input and a
/// single zero byte are both the empty map, as the spec allows.
pub fn deserialize_pairs(data: &[u8]) -> Option<Pairs> {
    if data.len() <= 1 {
        return if data.first().is_none_or(|b| *b == 0) {
            Some(Vec::new())
        } else {
            None
        };
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let n = word(0)?;
    let mut at = n.checked_mul(8)?.checked_add(4)?;
    if at > data.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kl = word(4 + i * 8)?;
        let vl = word(8 + i * 8)?;
        let k = data.get(at..at.checked_add(kl)?)?;
        at += kl + 1;
        let v = data.get(at..at.checked_add(vl)?)?;
        at += vl + 1;
        if at > data.len() {
            return None;
        }
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_match_the_spec_example() {
        let pairs = [("a", "1"), ("b", "22")];
        let bytes = serialize_pairs(pairs.iter().copied());
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"a\x001\x00b\x0022\x00",
        ]
        .concat();
        assert_eq!(bytes, expected);
        let back = deserialize_pairs(&bytes).expect("valid");
        assert_eq!(
            back,
            vec![("a".into(), "1".into()), ("b".into(), "22".into())]
        );
    }

    #[test]
    fn truncated_or_lying_maps_are_rejected() {
        let bytes = serialize_pairs([("key", "value")].iter().copied());
        for cut in 2..bytes.len() {
            assert_eq!(deserialize_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize_pairs(&huge), None);
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0]), Some(vec![]));
    }

    #[test]
    fn the_newest_marker_wins() {
        let v = AbiVersion::detect(["proxy_abi_version_0_1_0", "proxy_abi_version_0_2_0"]);
        assert_eq!(v, Some(AbiVersion::V0_2_0));
        assert_eq!(AbiVersion::detect(["memory"]), None);
    }
}
