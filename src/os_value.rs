//! How a spec's OS strings (its program, arguments, environment and paths) are written when
//! it is serialized: the registry keeps every spec as JSON, and fleet files are TOML or JSON,
//! formats that hold Unicode text only, while an OS string may be any bytes but NUL.
//!
//! - A value that is valid UTF-8 (every value of every spec written before this encoding
//!   existed, and nearly every value in practice) is a plain string: `"--port=8080"`.
//! - A value that is not is a table with its bytes in lowercase hex: `{ hex = "636166e9" }`
//!   (`caf` and the Latin-1 byte of `é`). Nothing is lost or replaced.
//! - An environment key is a map key, which must be a string: one that is not UTF-8 is
//!   written `"=hex:636166e9"`. No real key can start with `=`, so the two never collide.
//!
//! Pure; imports nothing of the crate.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The prefix of an environment key written in hex.
const HEX_KEY: &str = "=hex:";

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("hex value '{text}' has an odd number of digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    format!("hex value '{text}' has a character that is not a hex digit")
                })
        })
        .collect()
}

/// One value, borrowed for serializing.
struct Ref<'a>(&'a OsStr);

impl Serialize for Ref<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &to_hex(self.0.as_bytes()))?;
                map.end()
            }
        }
    }
}

/// One value, read back.
struct Owned(OsString);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owned, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Owned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or { hex = \"…\" } for bytes that are not UTF-8")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Owned, E> {
                Ok(Owned(v.into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Owned, A::Error> {
                let mut hex: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "hex" || hex.is_some() {
                        return Err(de::Error::custom(format!(
                            "unexpected key '{key}' (bytes that are not UTF-8 are written {{ hex = \"…\" }})"
                        )));
                    }
                    hex = Some(map.next_value()?);
                }
                let hex = hex.ok_or_else(|| de::Error::missing_field("hex"))?;
                let bytes = from_hex(&hex).map_err(de::Error::custom)?;
                Ok(Owned(OsString::from_vec(bytes)))
            }
        }
        d.deserialize_any(V)
    }
}

/// An environment key, borrowed for serializing (a map key: always a string).
fn key_text(key: &OsStr) -> String {
    match key.to_str() {
        Some(text) => text.to_string(),
        None => format!("{HEX_KEY}{}", to_hex(key.as_bytes())),
    }
}

fn key_from_text<E: de::Error>(text: String) -> Result<OsString, E> {
    match text.strip_prefix(HEX_KEY) {
        Some(hex) => Ok(OsString::from_vec(from_hex(hex).map_err(E::custom)?)),
        None => Ok(text.into()),
    }
}

/// `#[serde(with = "crate::os_value::one")]` for an `OsString`.
pub(crate) mod one {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &OsString, s: S) -> Result<S::Ok, S::Error> {
        Ref(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OsString, D::Error> {
        Ok(Owned::deserialize(d)?.0)
    }
}

/// `#[serde(with = "crate::os_value::opt")]` for an `Option<OsString>`.
pub(crate) mod opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<OsString>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(Ref).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OsString>, D::Error> {
        Ok(Option::<Owned>::deserialize(d)?.map(|o| o.0))
    }
}

/// `#[serde(with = "crate::os_value::list")]` for a `Vec<OsString>`.
pub(crate) mod list {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| Ref(x)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        Ok(Vec::<Owned>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

/// `#[serde(with = "crate::os_value::env")]` for the environment a spec sets.
pub(crate) mod env {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &BTreeMap<OsString, OsString>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(v.len()))?;
        for (key, value) in v {
            map.serialize_entry(&key_text(key), &Ref(value))?;
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<OsString, OsString>, D::Error> {
        BTreeMap::<String, Owned>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((key_from_text(k)?, v.0)))
            .collect()
    }
}

/// `#[serde(with = "crate::os_value::keys")]` for the environment keys a spec removes.
pub(crate) mod keys {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &BTreeSet<OsString>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|k| key_text(k)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeSet<OsString>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(key_from_text)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "one")]
        program: OsString,
        #[serde(with = "list")]
        args: Vec<OsString>,
        #[serde(with = "env")]
        env: BTreeMap<OsString, OsString>,
        #[serde(with = "keys")]
        removed: BTreeSet<OsString>,
        #[serde(default, with = "opt")]
        dir: Option<OsString>,
    }

    fn bytes(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    #[test]
    fn utf8_is_a_plain_string_and_other_bytes_are_hex() {
        let sample = Sample {
            program: "sh".into(),
            args: vec!["-c".into(), bytes(b"caf\xe9")],
            env: [
                (bytes(b"K\xff"), bytes(b"\x80")),
                ("PORT".into(), "80".into()),
            ]
            .into(),
            removed: [bytes(b"\xfe")].into(),
            dir: Some(bytes(b"/srv/\xe9t\xe9")),
        };
        let json = serde_json::to_string(&sample).unwrap();
        assert_eq!(
            json,
            r#"{"program":"sh","args":["-c",{"hex":"636166e9"}],"env":{"=hex:4bff":{"hex":"80"},"PORT":"80"},"removed":["=hex:fe"],"dir":{"hex":"2f7372762fe974e9"}}"#
        );
        assert_eq!(serde_json::from_str::<Sample>(&json).unwrap(), sample);
        let toml_text = toml::to_string(&sample).unwrap();
        assert_eq!(
            toml::from_str::<Sample>(&toml_text).unwrap(),
            sample,
            "{toml_text}"
        );
    }

    #[test]
    fn malformed_hex_is_an_error_that_says_so() {
        for (text, needle) in [
            (r#"{"hex":"6"}"#, "odd number"),
            (r#"{"hex":"zz"}"#, "not a hex digit"),
            (r#"{"bytes":"00"}"#, "unexpected key 'bytes'"),
            (r#"{}"#, "missing field `hex`"),
            ("5", "a string, or"),
        ] {
            let err = serde_json::from_str::<Owned>(text).err().unwrap();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(
            value in proptest::collection::vec(1u8..=255, 0..40),
            key in proptest::collection::vec(1u8..=255, 1..20),
        ) {
            let sample = Sample {
                program: bytes(&value),
                args: vec![bytes(&value)],
                env: [(bytes(&key), bytes(&value))].into(),
                removed: [bytes(&key)].into(),
                dir: None,
            };
            let json = serde_json::to_string(&sample).unwrap();
            prop_assert_eq!(serde_json::from_str::<Sample>(&json).unwrap(), sample);
        }
    }
}
