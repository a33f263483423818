//! JSON shapes of requests and answers, with the original's field names.

use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::model::Token;
pub use crate::model::rfc3339;

/// POST /v1/chatrooms and POST /v1/chatrooms/event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomBody {
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(rename = "organizationID", deserialize_with = "int")]
    pub organization_id: i64,
    #[serde(default, rename = "eventID", deserialize_with = "optional_int")]
    pub event_id: Option<i64>,
    #[serde(default, deserialize_with = "ints")]
    pub admins: Vec<i64>,
    #[serde(default, deserialize_with = "ints")]
    pub moderators: Vec<i64>,
    #[serde(default, rename = "assignedUsers", deserialize_with = "ints")]
    pub assigned_users: Vec<i64>,
    #[serde(default, rename = "automationEnabled")]
    pub automation_enabled: bool,
    #[serde(default, deserialize_with = "avatar")]
    pub avatar: Option<Vec<u8>>,
    #[serde(default, rename = "scheduledDeletion", deserialize_with = "deletion_time")]
    pub scheduled_deletion: Option<i64>,
    #[serde(default, rename = "readOnly")]
    pub read_only: bool,
    /// When the room becomes read-only by itself: a time as `scheduledDeletion`.
    #[serde(default, rename = "readOnlyAt", deserialize_with = "deletion_time")]
    pub read_only_at: Option<i64>,
}

/// POST /v1/chatrooms/default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDefaultBody {
    #[serde(rename = "organizationID", deserialize_with = "int")]
    pub organization_id: i64,
    #[serde(default, rename = "automationEnabled")]
    pub automation_enabled: bool,
    pub topic: Option<String>,
}

/// PATCH /v1/chatrooms/{roomID}: absent fields stay, `null` clears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomBody {
    #[serde(rename = "automationEnabled")]
    pub automation_enabled: Option<bool>,
    pub name: Option<String>,
    /// `null` or `""` removes the topic.
    #[serde(default, deserialize_with = "present")]
    pub topic: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_avatar")]
    pub avatar: Option<Option<Vec<u8>>>,
    #[serde(default, rename = "scheduledDeletion", deserialize_with = "present_deletion_time")]
    pub scheduled_deletion: Option<Option<i64>>,
    #[serde(rename = "readOnly")]
    pub read_only: Option<bool>,
    /// `null` cancels the scheduled switch to read-only.
    #[serde(default, rename = "readOnlyAt", deserialize_with = "present_deletion_time")]
    pub read_only_at: Option<Option<i64>>,
}

/// POST/DELETE /v1/chatrooms/{roomID}/users.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersBody {
    #[serde(default, deserialize_with = "ints")]
    pub admins: Vec<i64>,
    #[serde(default, deserialize_with = "ints")]
    pub moderators: Vec<i64>,
    #[serde(default, rename = "assignedUsers", deserialize_with = "ints")]
    pub assigned_users: Vec<i64>,
}

/// POST /v1/user/login.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    #[serde(rename = "deviceID")]
    pub device_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    #[serde(rename = "displayName")]
    pub display_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub name: Option<String>,
    #[serde(default, rename = "expiresInDays", deserialize_with = "optional_int")]
    pub expires_in_days: Option<i64>,
}

/// A token as listed: never the secret or its hash.
#[derive(Debug, Serialize)]
pub struct TokenView<'a> {
    pub id: u64,
    pub name: &'a str,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: Option<String>,
    pub revoked: bool,
}

impl<'a> From<&'a Token> for TokenView<'a> {
    fn from(t: &'a Token) -> Self {
        TokenView {
            id: t.id,
            name: &t.name,
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            revoked: t.revoked,
        }
    }
}

/// A field that may be sent as `null`: present (`Some`), with or without a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An avatar: the original's array of byte values, or a base64 string; null for none.
fn avatar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    d.deserialize_any(AvatarVisitor)
}

fn present_avatar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<u8>>>, D::Error> {
    avatar(d).map(Some)
}

struct AvatarVisitor;

impl<'de> Visitor<'de> for AvatarVisitor {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of byte values 0-255, a base64 string, or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        // Decoded where it lies in the body; copied only to drop line breaks.
        let cleaned: std::borrow::Cow<'_, str> = if v.chars().any(char::is_whitespace) {
            v.chars().filter(|c| !c.is_whitespace()).collect::<String>().into()
        } else {
            v.into()
        };
        GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
            .decode(cleaned.as_bytes())
            .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(cleaned.as_bytes()))
            .map(Some)
            .map_err(|_| {
                E::custom("avatar string is not base64: send the image bytes as base64 or as an array of numbers")
            })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(Int(v)) = seq.next_element::<Int>()? {
            let b = u8::try_from(v).map_err(|_| {
                de::Error::custom(format!("avatar holds {v}: every element must be a byte value 0-255"))
            })?;
            out.push(b);
        }
        Ok(Some(out))
    }
}

/// An integer as JSON Schema counts them: `7`, and also `7.0` or `7e0`,
/// which some encoders write for a whole number held as a float (read as
/// the nearest double, exactly: serde_json's `float_roundtrip`). A fraction
/// or a value outside i64 is a wrong type (400).
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor).map(Int)
    }
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a 64-bit signed integer"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 is exactly representable; i64::MAX is not, so the bound is exclusive.
        const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&v) {
            #[expect(clippy::cast_possible_truncation, reason = "whole and within i64, checked above")]
            return Ok(v as i64);
        }
        Err(E::invalid_type(de::Unexpected::Float(v), &self))
    }
}

fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Int::deserialize(d).map(|Int(v)| v)
}

/// An optional integer: absent or `null` is `None`.
pub(crate) fn optional_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Int>::deserialize(d).map(|v| v.map(|Int(v)| v))
}

fn ints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Int>::deserialize(d).map(|v| v.into_iter().map(|Int(v)| v).collect())
}

/// A deletion time: null, an RFC 3339 time, or Unix seconds.
fn deletion_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(TimeVisitor)
}

fn present_deletion_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    deletion_time(d).map(Some)
}

struct TimeVisitor;

impl Visitor<'_> for TimeVisitor {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, an RFC 3339 time such as 2030-01-31T12:00:00Z, or Unix seconds")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v).map(Some).map_err(|_| E::custom(format!("{v} is out of range for a time in Unix seconds")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        IntVisitor.visit_f64(v).map(Some)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .map(|t| Some(t.unix_timestamp()))
            .map_err(|_| E::custom(format!("{v:?} is not an RFC 3339 time such as 2030-01-31T12:00:00Z")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatar_forms() {
        let b: CreateRoomBody = serde_json::from_str(r#"{"organizationID":1,"avatar":[137,80,78,71]}"#).unwrap();
        assert_eq!(b.avatar.unwrap(), vec![137, 80, 78, 71]);
        let b: CreateRoomBody = serde_json::from_str(r#"{"organizationID":1,"avatar":"iVBORw=="}"#).unwrap();
        assert_eq!(b.avatar.unwrap(), vec![137, 80, 78, 71]);
        let b: CreateRoomBody = serde_json::from_str(r#"{"organizationID":1,"avatar":null}"#).unwrap();
        assert!(b.avatar.is_none());
        assert!(serde_json::from_str::<CreateRoomBody>(r#"{"organizationID":1,"avatar":[256]}"#).is_err());
        let p: UpdateRoomBody = serde_json::from_str(r#"{"avatar":null}"#).unwrap();
        assert_eq!(p.avatar, Some(None));
        let p: UpdateRoomBody = serde_json::from_str(r"{}").unwrap();
        assert_eq!(p.avatar, None);
    }

    #[test]
    fn whole_floats_are_integers() {
        let b: CreateRoomBody =
            serde_json::from_str(r#"{"organizationID":1.0,"eventID":5e0,"admins":[2.0,3],"avatar":[137.0,80]}"#)
                .unwrap();
        assert_eq!((b.organization_id, b.event_id, b.admins), (1, Some(5), vec![2, 3]));
        assert_eq!(b.avatar.unwrap(), vec![137, 80]);
        let b: CreateRoomBody = serde_json::from_str(r#"{"organizationID":1,"scheduledDeletion":1.9e9}"#).unwrap();
        assert_eq!(b.scheduled_deletion, Some(1_900_000_000));
        // Read exactly (serde_json's float_roundtrip), not one unit in the last place off.
        let b: UsersBody = serde_json::from_str(r#"{"admins":[3927630646516730.0]}"#).unwrap();
        assert_eq!(b.admins, vec![3_927_630_646_516_730]);
        let t: TokenBody = serde_json::from_str(r#"{"expiresInDays":30.0}"#).unwrap();
        assert_eq!(t.expires_in_days, Some(30));
        let t: TokenBody = serde_json::from_str(r#"{"expiresInDays":null}"#).unwrap();
        assert_eq!(t.expires_in_days, None);
        for bad in
            [r#"{"organizationID":1.5}"#, r#"{"organizationID":9223372036854775808}"#, r#"{"organizationID":1e19}"#]
        {
            let e = serde_json::from_str::<CreateRoomBody>(bad).unwrap_err().to_string();
            assert!(e.contains("integer"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<UsersBody>(r#"{"admins":[1.25]}"#).is_err());
    }

    #[test]
    fn deletion_time_forms() {
        let b: CreateRoomBody =
            serde_json::from_str(r#"{"organizationID":1,"scheduledDeletion":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(b.scheduled_deletion, Some(1_893_456_000));
        let b: CreateRoomBody = serde_json::from_str(r#"{"organizationID":1,"scheduledDeletion":5}"#).unwrap();
        assert_eq!(b.scheduled_deletion, Some(5));
        assert!(serde_json::from_str::<CreateRoomBody>(r#"{"organizationID":1,"scheduledDeletion":"soon"}"#).is_err());
        assert_eq!(rfc3339(1_893_456_000), "2030-01-01T00:00:00Z");
    }
}
