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
mod control_abuse;
mod control_limits;
mod control_socket;
mod copied_marker;
mod delete;
mod escaped_after_exit;
mod events_and_logs;
mod fd_limit;
mod fleet;
mod fuzz_inputs;
mod guardian;
mod history;
mod host_death;
mod import_pm2;
mod import_supervisord;
mod imported_fleet;
mod logs;
mod model;
mod notify_access;
mod overtaking;
mod persistence;
mod probe_hygiene;
mod readiness;
mod restarts;
mod schedule;
mod state_dir_loss;
mod state_dir_security;
mod stopping;
mod store_faults;
mod storm;
mod trigger_threads;
mod validation;
mod wait_for;
mod watch;
mod watchdog;
