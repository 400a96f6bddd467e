//! C ABI: the metrics exposition in the format a server's own endpoint serves
//! (`keel_host_metrics_text_format`: OpenMetrics or classic Prometheus text).

use super::host::{keel_buffer, keel_host};
use super::{borrow, fill_buffer};
use crate::bail;
use crate::error::keel_status;
use crate::metrics::exposition;

/// `format` value of [`keel_host_metrics_text_format`]: OpenMetrics 1.0 text (what
/// `keel_host_metrics_text` writes), served as `KEEL_METRICS_CONTENT_TYPE_OPENMETRICS`.
pub const KEEL_METRICS_FORMAT_OPENMETRICS: u32 = 0;
/// `format` value of [`keel_host_metrics_text_format`]: the classic Prometheus text format
/// 0.0.4, served as `KEEL_METRICS_CONTENT_TYPE_PROMETHEUS`.
pub const KEEL_METRICS_FORMAT_PROMETHEUS: u32 = 1;

/// Write the metrics of every loaded plugin (the families of `keel_host_metrics_text`) into
/// `out` (an output buffer) in the exposition format `format`:
/// - `KEEL_METRICS_FORMAT_OPENMETRICS` (0): OpenMetrics 1.0 text ending with `# EOF`, exactly
///   `keel_host_metrics_text`; serve it as `KEEL_METRICS_CONTENT_TYPE_OPENMETRICS`.
/// - `KEEL_METRICS_FORMAT_PROMETHEUS` (1): the classic Prometheus text format 0.0.4 — no
///   `# EOF`, no `# UNIT`, counter families named `*_total` — that can be appended to the
///   output of a server's own `/metrics` endpoint when it serves
///   `KEEL_METRICS_CONTENT_TYPE_PROMETHEUS` (keep family names unique across both).
///
/// Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (unknown `format`).
#[no_mangle]
pub extern "C" fn keel_host_metrics_text_format(
    host: *const keel_host,
    format: u32,
    out: *mut keel_buffer,
) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let text = h.metrics_text();
        out.clear();
        match format {
            KEEL_METRICS_FORMAT_OPENMETRICS => out.extend_from_slice(text.as_bytes()),
            KEEL_METRICS_FORMAT_PROMETHEUS => {
                out.extend_from_slice(exposition::to_prometheus_text(&text).as_bytes())
            }
            _ => bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "metrics format {format} is unknown (KEEL_METRICS_FORMAT_OPENMETRICS = 0, KEEL_METRICS_FORMAT_PROMETHEUS = 1)"
            ),
        }
        Ok(())
    })
}
