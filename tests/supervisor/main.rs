//! Integration tests with real children, real SQLite files and real signals. Each test runs
//! its children with a token in their environment and ends by proving, from /proc, that no
//! process carrying it is left (see `common::Harness::finish`).

mod common;
mod prelude;

mod after_shutdown;
mod backoff_races;
mod batch_faults;
mod cgroup_reuse;
mod clean_spawn;
mod concurrency;
mod containment_choice;
mod copied_marker;
mod delete;
mod delete_removes_logs;
mod environment;
mod escaped_daemons;
mod events_and_logs;
mod fd_limit;
mod fleet;
mod fuzz_inputs;
mod guardian_cleanup;
mod guardian_replacement;
mod history;
mod host_children;
mod leftovers_after_exit;
mod log_capture;
mod log_follow;
mod log_full_disk;
mod log_rotation;
mod max_memory;
mod max_pids;
mod model;
mod notify_access;
mod overtaking;
mod parallel_stops;
mod persistence;
mod probe_hygiene;
mod readiness;
mod reclaim;
mod reclaim_spares_a_reused_pid;
mod reopen_during_guardian_cleanup;
mod restarts;
mod state_dir_loss;
mod state_dir_security;
mod stop_escalation;
mod stop_waits_for_the_group;
mod store_faults;
mod storm;
mod subreaper_reaping;
mod thread_count;
mod validation;
mod wait_for;
