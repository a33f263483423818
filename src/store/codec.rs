//! The one place values become bytes: a format-version byte, then bincode.
//!
//! The version byte lets a later release change the encoding without a flag
//! day: it reads both, writes the new one.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the value encoding written today.
pub const FORMAT_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value for storage.
///
/// # Panics
/// Never for the service's own records: they contain only types bincode encodes.
#[must_use]
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding a record into memory cannot fail");
    out
}

/// Decodes a stored value.
///
/// # Errors
/// An unknown format version or bytes that are not a record of this type.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::serde::decode_from_slice(rest, config())
            .map(|(v, _)| v)
            .map_err(|e| format!("undecodable record: {e}")),
        Some((v, _)) => Err(format!("record in unknown format version {v}")),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Organization, OutboxOp};

    #[test]
    fn round_trip_with_version_byte() {
        let org = Organization { id: 7, name: "Acme".into(), created_at: 1 };
        let bytes = encode(&org);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Organization>(&bytes).unwrap(), org);
        let op = OutboxOp::DeleteRoom { room_id: 3, matrix_room_id: "!a:b".into() };
        assert_eq!(decode::<OutboxOp>(&encode(&op)).unwrap(), op);
    }

    #[test]
    fn unknown_version_is_an_error() {
        let mut bytes = encode(&1u64);
        bytes[0] = 99;
        assert!(decode::<u64>(&bytes).unwrap_err().contains("99"));
        assert!(decode::<u64>(&[]).is_err());
    }
}
