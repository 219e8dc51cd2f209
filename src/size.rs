//! Sizes in bytes as people write them in fleet files: `"300M"`, `"1.5GiB"`, `"64 KiB"`,
//! `"512"`, or a plain integer. Every unit is a power of 1024, as in supervisord
//! (`stdout_logfile_maxbytes = 50MB`), PM2 (`max_memory_restart: "300M"`) and systemd
//! (`MemoryMax=300M`): `K`, `KB` and `KiB` all mean 1024 bytes. Pure; imports nothing of
//! the crate.

/// Parses a size: a number (a fractional part is allowed with a unit; the result is rounded
/// down to whole bytes), optional spaces, and an optional unit among `B`, `K`, `M`, `G`, `T`
/// (each also with `B` or `iB` after it, any case). Errors are lowercase phrases.
pub(crate) fn parse(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let malformed = || format!("size '{s}' is not a number with an optional unit");
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(malformed());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "size '{s}' has an unknown unit '{other}' (use B, K, M, G or T; KiB and KB mean the same)"
            ));
        }
    };
    let too_large = || format!("size '{s}' is too large");
    if !number.contains('.') {
        let n: u64 = number.parse().map_err(|_| too_large())?;
        return n.checked_mul(1 << shift).ok_or_else(too_large);
    }
    let value: f64 = number.parse().map_err(|_| malformed())?;
    let bytes = (value * (1u64 << shift) as f64).floor();
    if bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

/// Reads a size from a spec or fleet file: an integer (bytes) or a string with a unit.
fn visit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::{self, Visitor};
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size in bytes: an integer, or a string such as \"300M\" or \"1.5GiB\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// `#[serde(deserialize_with = "crate::size::bytes")]`: a `u64` written as a size.
pub(crate) fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    visit(d)
}

/// `#[serde(deserialize_with = "crate::size::bytes_usize")]`: a `usize` written as a size.
pub(crate) fn bytes_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = visit(d)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("size {n} is too large")))
}

/// `#[serde(deserialize_with = "crate::size::opt_bytes")]`: an `Option<u64>` written as a size.
pub(crate) fn opt_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    visit(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units_are_powers_of_1024() {
        assert_eq!(parse("300M"), Ok(300 << 20));
        assert_eq!(parse("300MB"), Ok(300 << 20));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("64 KiB"), Ok(64 << 10));
        assert_eq!(parse("2t"), Ok(2 << 40));
        assert_eq!(parse("512"), Ok(512));
        assert_eq!(parse("512B"), Ok(512));
        assert_eq!(parse("0.5K"), Ok(512));
        assert_eq!(parse("1.0001K"), Ok(1024), "rounded down to whole bytes");
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("M").unwrap_err().contains("not a number"));
        assert!(parse("1.K").unwrap_err().contains("not a number"));
        assert!(parse("").unwrap_err().contains("not a number"));
        assert!(parse("-1M").unwrap_err().contains("not a number"));
        assert!(parse("99999999999T").unwrap_err().contains("too large"));
        assert!(parse("1e30").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn fields_take_integers_or_strings() {
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(deserialize_with = "bytes")]
            n: u64,
        }
        assert_eq!(toml::from_str::<F>("n = 4096").unwrap().n, 4096);
        assert_eq!(toml::from_str::<F>("n = \"4K\"").unwrap().n, 4096);
        assert_eq!(
            serde_json::from_str::<F>(r#"{"n":"1M"}"#).unwrap().n,
            1 << 20
        );
        let err = toml::from_str::<F>("n = -1").err().unwrap();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = toml::from_str::<F>("n = true").err().unwrap();
        assert!(err.to_string().contains("a size in bytes"), "{err}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,24}") {
            let _ = parse(&text);
        }

        #[test]
        fn plain_integers_are_bytes(n in 0u64..u64::MAX) {
            prop_assert_eq!(parse(&n.to_string()), Ok(n));
        }
    }
}
