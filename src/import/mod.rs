//! Importers: the configuration files of other process managers (PM2's ecosystem files,
//! supervisord's INI files) read into service specs, with a warning for every option that
//! has no equivalent here or a different meaning, so that nothing is dropped silently.

pub(crate) mod pm2;
pub(crate) mod supervisord;

use crate::error::{Error, ErrorKind};
use crate::signal::Signal;
use crate::spec::ServiceSpec;

/// What an importer read: the services, in the order they start, and the warnings.
pub(crate) struct Imported {
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) warnings: Vec<String>,
}

/// An `InvalidSpec` error about file `origin`.
pub(crate) fn invalid(origin: &str, message: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidSpec, format!("'{origin}': {message}"))
}

/// A signal by name, with or without `SIG`, in any case (`TERM`, `sigint`).
pub(crate) fn signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    serde_json::from_value(serde_json::Value::String(bare.to_string())).ok()
}

/// A size as these tools write it: `1024`, `300M`, `50MB`, `1G`, `10KB` (powers of 1024).
pub(crate) fn bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K') => (&t[..i], 10),
        (i, 'M') => (&t[..i], 20),
        (i, 'G') => (&t[..i], 30),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_signals_are_read_as_the_tools_write_them() {
        assert_eq!(bytes("300M"), Some(300 << 20));
        assert_eq!(bytes("50MB"), Some(50 << 20));
        assert_eq!(bytes("1GB"), Some(1 << 30));
        assert_eq!(bytes("10kb"), Some(10 << 10));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("lots"), None);
        assert_eq!(signal("TERM"), Some(Signal::Term));
        assert_eq!(signal("sigusr2"), Some(Signal::Usr2));
        assert_eq!(signal("WINCH"), None);
    }
}
