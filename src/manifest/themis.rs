//! ThemisDB `plugin.json` compatibility: convert a ThemisDB manifest into a Keel manifest.

use serde_json::Value;

use crate::error::Result;
use crate::manifest::Manifest;

/// Convert a ThemisDB `plugin.json` value into a Keel [`Manifest`].
pub fn convert(_value: &Value) -> Result<Manifest> {
    crate::bail!(
        KEEL_ERR_MANIFEST_UNKNOWN_FORMAT,
        "ThemisDB plugin.json support is being written"
    )
}
