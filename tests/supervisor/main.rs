//! Integration tests with real children, real SQLite files and real signals: one file per
//! behaviour, each saying what it proves. Each test runs its children with a token in their
//! environment and ends by proving, from /proc, that no process carrying it is left
//! (`prelude::Harness::finish`). The behaviours that depend on the containment tier run
//! once per tier, as tests named `cgroup`, `subreaper` and `process_group` in a module per
//! scenario (`prelude::per_tier!`); a tier this machine cannot give is skipped, saying why.
//! `SHEEPDOG_STRESS=1` runs the long stress runs.

mod prelude;

mod after_shutdown;
mod apply;
mod backoff_races;
mod batch_faults;
mod cgroup_reuse;
mod clean_spawn;
mod containment_choice;
mod control_abuse;
mod control_limits;
mod control_socket;
mod copied_marker;
mod cpu_affinity;
mod crash_loop_history_after_host_kill;
mod defined;
mod delete_removes_logs;
mod delete_waves;
mod dependencies;
mod drop_is_a_shutdown;
mod env_file;
mod environment;
mod escaped_daemons;
mod events;
mod exit_while_output_drains;
mod explain;
mod extreme_numbers;
mod fd_limit;
mod fleet_files;
mod fleet_runner;
mod full_state_disk;
mod fuzzed_inputs;
mod garbage_state_file;
mod guardian_cleanup;
mod guardian_replacement;
mod health_checks;
mod host_children;
mod import_pm2;
mod import_supervisord;
mod imported_fleet;
mod instances;
mod leftovers_after_exit;
mod log_capture;
mod log_follow;
mod log_full_disk;
mod log_rotation;
mod max_memory;
mod max_pids;
mod model;
mod non_utf8_values;
mod notify_access;
mod oneshot;
mod orphan_reaping;
mod overtaking;
mod parallel_spawns;
mod parallel_stops;
mod probe_hygiene;
mod process_settings;
mod read_only_state_dir;
mod readiness;
mod readiness_endpoint;
mod reclaim;
mod reclaim_spares_a_reused_pid;
mod reopen;
mod reopen_during_guardian_cleanup;
mod restart_policy;
mod rolling_reload;
mod run_history;
mod schedule;
mod spec_change;
mod state_dir_lock;
mod state_dir_loss;
mod state_dir_security;
mod state_file_refused;
mod stats;
mod stop_all_signals_first;
mod stop_during_pid_churn;
mod stop_escalation;
mod stop_waits_for_the_group;
mod storm;
mod subreaper_reaping;
mod thread_count;
mod trigger_threads;
mod user_switch;
mod validation;
mod wait_for;
mod watch;
mod watchdog;
