//! Integration tests with real children, real SQLite files and real signals. Each test runs
//! its children with a token in their environment and ends by proving, from /proc, that no
//! process carrying it is left (see `common::Harness::finish`).

mod common;

mod after_shutdown;
mod backoff_races;
mod batch_faults;
mod child_hygiene;
mod concurrency;
mod containment;
mod copied_marker;
mod defined;
mod delete;
mod env_file;
mod escaped_after_exit;
mod events_and_logs;
mod fd_limit;
mod fleet;
mod fuzz_inputs;
mod guardian;
mod history;
mod host_death;
mod instances;
mod logs;
mod model;
mod non_utf8_values;
mod notify_access;
mod oneshot;
mod overtaking;
mod persistence;
mod probe_hygiene;
mod process_settings;
mod readiness;
mod restarts;
mod rolling_reload;
mod state_dir_loss;
mod state_dir_security;
mod stopping;
mod store_faults;
mod storm;
mod user_switch;
mod validation;
mod wait_for;
