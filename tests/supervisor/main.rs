//! Integration tests with real children, real SQLite files and real signals. Each test runs
//! its children with a token in their environment and ends by proving, from /proc, that no
//! process carrying it is left (see `common::Harness::finish`).

mod common;
mod prelude;

mod after_shutdown;
mod backoff_races;
mod batch_faults;
mod child_hygiene;
mod concurrency;
mod containment;
mod containment_choice;
mod copied_marker;
mod delete;
mod escaped_daemons;
mod events_and_logs;
mod fd_limit;
mod fleet;
mod fuzz_inputs;
mod guardian;
mod history;
mod host_death;
mod leftovers_after_exit;
mod logs;
mod model;
mod notify_access;
mod overtaking;
mod parallel_stops;
mod persistence;
mod probe_hygiene;
mod readiness;
mod restarts;
mod state_dir_loss;
mod state_dir_security;
mod stop_escalation;
mod stop_waits_for_the_group;
mod store_faults;
mod storm;
mod subreaper_reaping;
mod validation;
mod wait_for;
