//! Record encoding: JSON, so a damaged record names itself in the error.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): encoding cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("record `{}`", String::from_utf8_lossy(key).escape_debug()),
        cause: e.to_string(),
    })
}
