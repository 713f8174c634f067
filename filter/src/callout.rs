//! The telemetry callout's request: its headers, serialized the way the ABI's
//! `proxy_http_call` reads header pairs.

use shadowplane_wire::{REPORT_CONTENT_TYPE, ValidTelemetry};

/// The headers of a report POSTed to `target`, serialized for `proxy_http_call`.
pub fn report_headers(target: &ValidTelemetry) -> Vec<u8> {
    let auth = target.auth_token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        (":method", "POST"),
        (":path", target.path.as_str()),
        (":authority", target.authority.as_str()),
        ("content-type", REPORT_CONTENT_TYPE),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    serialize_pairs(&headers)
}

/// Serializes header pairs as the spec's `proxy_http_call` reads them: the number of pairs,
/// each key's and value's size, then each key and each value followed by a NUL, all sizes as
/// little-endian `u32`.
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let text: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + 8 * pairs.len() + text);
    let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&size(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&size(k.len()));
        out.extend_from_slice(&size(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_serialize_as_the_spec_reads_them() {
        let b = serialize_pairs(&[(":method", "POST"), ("a", "")]);
        let mut expected = vec![2, 0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b":method\0POST\0a\0\0");
        assert_eq!(b, expected);
    }

    #[test]
    fn a_report_carries_the_token_and_the_content_type() {
        let target = ValidTelemetry {
            cluster: "collector".into(),
            path: "/v1/telemetry".into(),
            authority: "collector".into(),
            auth_token: Some("s3cret".into()),
            timeout_ms: 500,
        };
        let b = report_headers(&target);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("authorization\0Bearer s3cret\0"), "{text:?}");
        assert!(text.contains(&format!("content-type\0{REPORT_CONTENT_TYPE}\0")));
        assert_eq!(b[0], 5, "five pairs");
    }
}
