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

/// Flag OR-ed into the `format` of [`keel_host_metrics_text_format`]: leave out the
/// `keel_plugin_call_duration_seconds` series (`_sum`, `_count`, 30 `_bucket` lines, about
/// 3 KB per plugin) of every plugin that has had no call since it was loaded
/// (`keel_plugin_calls_total` 0). The family's `# HELP`/`# TYPE` lines and every other series
/// stay. Either format.
pub const KEEL_METRICS_OMIT_IDLE_HISTOGRAMS: u32 = 0x100;

/// The `format` bits that select the format; the rest are `KEEL_METRICS_*` flags.
const FORMAT_MASK: u32 = 0xff;

/// Write the metrics of every loaded plugin (the families of `keel_host_metrics_text`) into
/// `out` (an output buffer) in the exposition format `format`:
/// - `KEEL_METRICS_FORMAT_OPENMETRICS` (0): OpenMetrics 1.0 text ending with `# EOF`, exactly
///   `keel_host_metrics_text`; serve it as `KEEL_METRICS_CONTENT_TYPE_OPENMETRICS`.
/// - `KEEL_METRICS_FORMAT_PROMETHEUS` (1): the classic Prometheus text format 0.0.4 — no
///   `# EOF`, no `# UNIT`, counter families named `*_total` — that can be appended to the
///   output of a server's own `/metrics` endpoint when it serves
///   `KEEL_METRICS_CONTENT_TYPE_PROMETHEUS` (keep family names unique across both).
///
/// Flags OR-ed into `format`: `KEEL_METRICS_OMIT_IDLE_HISTOGRAMS` (no latency histogram for
/// plugins never called since their load).
///
/// Thread-safe (for distinct buffers).
///
/// Errors: `KEEL_ERR_NULL_POINTER`, `KEEL_ERR_INVALID_ARGUMENT` (unknown format or flag).
#[no_mangle]
pub extern "C" fn keel_host_metrics_text_format(
    host: *const keel_host,
    format: u32,
    out: *mut keel_buffer,
) -> keel_status {
    fill_buffer(out, |out| {
        // SAFETY: caller contract.
        let h = unsafe { borrow(host, "host") }?;
        let flags = format & !FORMAT_MASK;
        if flags & !KEEL_METRICS_OMIT_IDLE_HISTOGRAMS != 0 {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "metrics format flags {flags:#x} are unknown (known: KEEL_METRICS_OMIT_IDLE_HISTOGRAMS = 0x100)"
            );
        }
        let format = format & FORMAT_MASK;
        if format > KEEL_METRICS_FORMAT_PROMETHEUS {
            bail!(
                KEEL_ERR_INVALID_ARGUMENT,
                "metrics format {format} is unknown (KEEL_METRICS_FORMAT_OPENMETRICS = 0, KEEL_METRICS_FORMAT_PROMETHEUS = 1)"
            );
        }
        let text = h.metrics_text_with(exposition::ExpositionOptions {
            omit_idle_histograms: flags & KEEL_METRICS_OMIT_IDLE_HISTOGRAMS != 0,
        });
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
