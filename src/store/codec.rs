//! The one place values become bytes: the record's version byte, then bincode.
//!
//! bincode is positional: a record written with one field list cannot be
//! read with another. So every stored type carries its own record version
//! ([`Versioned`]), written as the first byte. Today's code reads only
//! today's versions; older versions are read once, by the migration that
//! rewrites them (`store::migrate`), with the frozen types of that version.
//! Before versions existed the first byte was a format byte fixed at 1,
//! which is why every type's first version is 1.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{DeliveryAttempt, Event, Organization, OutboxOp, Room, Token, User, Webhook};

/// A stored type and the version of the record it is written as today.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Bumped, with a migration step, whenever the encoded fields change.
    const VERSION: u8;
}

/// Every stored type with its record version. A change here needs a new
/// schema version and a step in `store::migrate` that rewrites the records.
impl Versioned for Room {
    /// 2: `topic` after `name`, `automation_given`, and `read_only`,
    /// `read_only_at` at the end (schema 2).
    const VERSION: u8 = 2;
}
impl Versioned for Organization {
    const VERSION: u8 = 1;
}
impl Versioned for User {
    const VERSION: u8 = 1;
}
impl Versioned for Token {
    const VERSION: u8 = 1;
}
impl Versioned for OutboxOp {
    const VERSION: u8 = 1;
}
/// New in schema 2.
impl Versioned for Event {
    const VERSION: u8 = 1;
}
/// New in schema 2.
impl Versioned for Webhook {
    const VERSION: u8 = 1;
}
/// New in schema 2.
impl Versioned for DeliveryAttempt {
    const VERSION: u8 = 1;
}
/// Facts in `name_meta` (schema version, cache versions).
impl Versioned for u64 {
    const VERSION: u8 = 1;
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value for storage, as today's version of its record.
#[must_use]
pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    encode_as(T::VERSION, value)
}

/// Encodes a value as record version `version`. For migrations, and for
/// tests and benchmarks that need a database as an older release wrote it.
///
/// # Panics
/// Never for the service's own records: they contain only types bincode encodes.
#[must_use]
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding a record into memory cannot fail");
    out
}

/// Decodes a stored value of today's version.
///
/// # Errors
/// Another version (older: the database was not migrated; newer: written by
/// a newer release), or bytes that are not a record of this type.
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, String> {
    match version_of(bytes)? {
        v if v == T::VERSION => decode_as(v, bytes),
        v if v < T::VERSION => {
            Err(format!("record version {v} is older than this release's {} and was not migrated", T::VERSION))
        }
        v => Err(format!("record version {v} is newer than this release's {}", T::VERSION)),
    }
}

/// The version byte of a stored value.
///
/// # Errors
/// An empty value.
pub fn version_of(bytes: &[u8]) -> Result<u8, String> {
    bytes.first().copied().ok_or_else(|| "empty record".to_string())
}

/// Decodes a value stored as record version `version` into `T`, the type of
/// that version (today's, or a frozen one in `store::migrate`).
///
/// # Errors
/// A different version byte, or bytes that are not a record of this type.
pub fn decode_as<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => {
            let (value, used) = bincode::serde::decode_from_slice(rest, config())
                .map_err(|e| format!("undecodable record (version {v}): {e}"))?;
            if used != rest.len() {
                return Err(format!("undecodable record (version {v}): {} bytes left over", rest.len() - used));
            }
            Ok(value)
        }
        Some((v, _)) => Err(format!("record version {v} where version {version} was expected")),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_version_byte() {
        let org = Organization { id: 7, name: "Acme".into(), created_at: 1 };
        let bytes = encode(&org);
        assert_eq!(bytes[0], Organization::VERSION);
        assert_eq!(decode::<Organization>(&bytes).unwrap(), org);
        let op = OutboxOp::DeleteRoom { room_id: 3, matrix_room_id: "!a:b".into() };
        assert_eq!(decode::<OutboxOp>(&encode(&op)).unwrap(), op);
    }

    #[test]
    fn other_versions_are_named() {
        let mut bytes = encode(&1u64);
        bytes[0] = 99;
        assert!(decode::<u64>(&bytes).unwrap_err().contains("newer"));
        let room = crate::domain::rooms::blank_room(1, 1, 0);
        let mut old = encode(&room);
        old[0] = 1;
        assert!(decode::<Room>(&old).unwrap_err().contains("not migrated"));
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&Organization { id: 7, name: "Acme".into(), created_at: 1 });
        bytes.push(0);
        assert!(decode::<Organization>(&bytes).unwrap_err().contains("left over"));
    }
}
