//! The `sheepdog` command as a subprocess, against a host in another process (this test
//! binary run again as a host: see `host.rs`). Each test has its own state directory and its
//! own registration directory (`SHEEPDOG_RUNTIME_DIR`), and ends by proving that the
//! host's children are gone.

#[path = "../supervisor/common.rs"]
mod common;
mod host;

mod every_command;
mod follow;
mod import;
mod no_host;
mod one_host;
mod other_uid;
