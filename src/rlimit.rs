//! [`Resource`]: what a service's resource limits (`setrlimit`) apply to, and how a limit is
//! written in a spec or fleet file. Pure; imports nothing of the crate but the size parser.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The value of a limit that does not limit: `RLIM_INFINITY`.
///
/// # Example
///
/// ```
/// use sheepdog::{Resource, ServiceSpec, UNLIMITED};
///
/// let spec = ServiceSpec::new("db", "postgres").limit(Resource::CoreSize, UNLIMITED, UNLIMITED);
/// assert_eq!(spec.get_limit(Resource::CoreSize), Some((UNLIMITED, UNLIMITED)));
/// ```
pub const UNLIMITED: u64 = u64::MAX;

/// A resource whose use a service's processes are limited in (`setrlimit(2)`), set in the
/// new process before it runs the service's program. In files, by the name systemd uses
/// after `Limit` (`nofile`, `core`, …).
///
/// # Example
///
/// ```
/// use sheepdog::{Fleet, Resource};
///
/// let fleet = Fleet::from_toml_str(
///     "[[service]]\nname = \"db\"\nprogram = \"postgres\"\n\
///      limits = { nofile = 4096, as = { soft = \"1GiB\", hard = \"2GiB\" } }\n",
/// )?;
/// let db = &fleet.services()[0];
/// assert_eq!(db.get_limit(Resource::OpenFiles), Some((4096, 4096)));
/// assert_eq!(db.get_limit(Resource::AddressSpace), Some((1 << 30, 2 << 30)));
/// assert_eq!(Resource::OpenFiles.as_str(), "nofile");
/// # Ok::<(), sheepdog::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Resource {
    /// Open file descriptors (`RLIMIT_NOFILE`; `nofile`, systemd's `LimitNOFILE=`).
    #[serde(rename = "nofile")]
    OpenFiles,
    /// The size of a core dump, in bytes (`RLIMIT_CORE`; `core`); 0 disables core dumps.
    #[serde(rename = "core")]
    CoreSize,
    /// Processes (and threads) of the service's user, counted over the whole host
    /// (`RLIMIT_NPROC`; `nproc`).
    #[serde(rename = "nproc")]
    Processes,
    /// Virtual memory (address space), in bytes (`RLIMIT_AS`; `as`).
    #[serde(rename = "as")]
    AddressSpace,
    /// The main thread's stack, in bytes (`RLIMIT_STACK`; `stack`).
    #[serde(rename = "stack")]
    Stack,
    /// Memory locked into RAM, in bytes (`RLIMIT_MEMLOCK`; `memlock`).
    #[serde(rename = "memlock")]
    LockedMemory,
    /// CPU time, in seconds (`RLIMIT_CPU`; `cpu`): SIGXCPU at the soft limit, SIGKILL at the
    /// hard one.
    #[serde(rename = "cpu")]
    CpuTime,
    /// The largest file a process may write, in bytes (`RLIMIT_FSIZE`; `fsize`).
    #[serde(rename = "fsize")]
    FileSize,
}

impl Resource {
    /// The name in files and messages: `nofile`, `core`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::OpenFiles => "nofile",
            Resource::CoreSize => "core",
            Resource::Processes => "nproc",
            Resource::AddressSpace => "as",
            Resource::Stack => "stack",
            Resource::LockedMemory => "memlock",
            Resource::CpuTime => "cpu",
            Resource::FileSize => "fsize",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A soft and a hard limit. Written as one value when both are the same (`4096`,
/// `"unlimited"`, `"1GiB"`), else as `{ soft = …, hard = … }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

struct One(u64);

impl Serialize for One {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            UNLIMITED => s.serialize_str("unlimited"),
            n => s.serialize_u64(n),
        }
    }
}

impl<'de> Deserialize<'de> for One {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<One, D::Error> {
        d.deserialize_any(LimitVisitor).and_then(|l| {
            if l.soft == l.hard {
                Ok(One(l.soft))
            } else {
                Err(de::Error::custom(
                    "expected one value, not a soft and a hard limit",
                ))
            }
        })
    }
}

struct LimitVisitor;

impl<'de> Visitor<'de> for LimitVisitor {
    type Value = Limit;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a limit: an integer, \"unlimited\", a size such as \"1GiB\", or { soft = …, hard = … }",
        )
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Limit, E> {
        Ok(Limit { soft: v, hard: v })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Limit, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("limit {v} is negative")))?;
        self.visit_u64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Limit, E> {
        let n = match v.trim() {
            "unlimited" | "infinity" => UNLIMITED,
            text => crate::size::parse(text).map_err(E::custom)?,
        };
        self.visit_u64(n)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Limit, A::Error> {
        let (mut soft, mut hard) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "soft" => &mut soft,
                "hard" => &mut hard,
                other => {
                    return Err(de::Error::unknown_field(other, &["soft", "hard"]));
                }
            };
            *slot = Some(map.next_value::<One>()?.0);
        }
        match (soft, hard) {
            (Some(soft), Some(hard)) => Ok(Limit { soft, hard }),
            (None, _) => Err(de::Error::missing_field("soft")),
            (_, None) => Err(de::Error::missing_field("hard")),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.soft == self.hard {
            return One(self.soft).serialize(s);
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("soft", &One(self.soft))?;
        map.serialize_entry("hard", &One(self.hard))?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        d.deserialize_any(LimitVisitor)
    }
}

/// `#[serde(with = "crate::rlimit::umask")]` for an `Option<u32>` file mode mask: written as
/// a string of octal digits (`"022"`, as supervisord's `umask=022`); read from such a string
/// or from an integer (TOML's `0o022`).
pub(crate) mod umask {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|m| format!("{m:03o}")).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a umask: octal digits as a string (\"022\"), or an integer (0o022)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| E::custom(format!("umask {v:o} (octal) is above 777")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("umask is negative"))?;
                self.visit_u64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
                let digits = v.trim().trim_start_matches("0o");
                let m = u64::from_str_radix(digits, 8)
                    .map_err(|_| E::custom(format!("umask '{v}' is not octal digits")))?;
                self.visit_u64(m)
            }
        }
        d.deserialize_any(V).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct F {
        limits: BTreeMap<Resource, Limit>,
        #[serde(default, with = "umask")]
        umask: Option<u32>,
    }

    #[test]
    fn limits_are_one_value_or_soft_and_hard() {
        let f: F = toml::from_str(
            r#"
umask = "027"
[limits]
nofile = { soft = 1024, hard = 4096 }
core = "unlimited"
as = "1.5GiB"
nproc = 64
"#,
        )
        .unwrap();
        assert_eq!(f.umask, Some(0o027));
        assert_eq!(
            f.limits[&Resource::OpenFiles],
            Limit {
                soft: 1024,
                hard: 4096
            }
        );
        assert_eq!(f.limits[&Resource::CoreSize].hard, UNLIMITED);
        assert_eq!(f.limits[&Resource::AddressSpace].soft, 3 << 29);
        assert_eq!(f.limits[&Resource::Processes].soft, 64);
        let text = toml::to_string(&f).unwrap();
        assert_eq!(toml::from_str::<F>(&text).unwrap(), f, "{text}");
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains(r#""core":"unlimited""#), "{json}");
        assert!(json.contains(r#""umask":"027""#), "{json}");
        assert_eq!(serde_json::from_str::<F>(&json).unwrap(), f);
    }

    #[test]
    fn bad_limits_and_masks_say_why() {
        for (text, needle) in [
            ("[limits]\nnofile = -1", "negative"),
            ("[limits]\nnofile = { soft = 1 }", "missing field `hard`"),
            (
                "[limits]\nnofile = { soft = 1, hard = 2, max = 3 }",
                "unknown field `max`",
            ),
            ("[limits]\nfiles = 1", "unknown variant `files`"),
            ("[limits]\ncore = \"lots\"", "not a number"),
            ("[limits]\ncore = \"9 parsecs\"", "unknown unit"),
            ("umask = \"089\"\n[limits]", "not octal"),
            ("umask = 0o1777\n[limits]", "above 777"),
        ] {
            let err = toml::from_str::<F>(text).err().unwrap();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let f: F = toml::from_str("umask = 0o022\n[limits]").unwrap();
        assert_eq!(f.umask, Some(0o022));
    }
}
