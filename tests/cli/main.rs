//! The `sheepdog` command as a subprocess, against a host in another process (this test
//! binary run again as a host: see `host.rs`). Each test has its own state directory and its
//! own registration directory (`SHEEPDOG_RUNTIME_DIR`), and ends by proving that the
//! host's children are gone.

// The supervisor tests' prelude; its tier macros serve only those tests.
#[path = "../supervisor/prelude.rs"]
#[allow(unused_macros, unused_imports)]
mod common;
mod host;

mod every_command;
mod export;
mod follow;
mod import;
mod no_host;
mod one_host;
mod other_uid;
mod run_as_init;
mod run_foreground;
