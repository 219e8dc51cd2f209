//! A host in another process: this test binary, run again with `--ignored` on `serve`, opens
//! a supervisor on a state directory, applies a fleet file, says it is ready, and shuts down
//! when its stdin closes (so a test that dies takes its host with it).

use crate::common::{self, TOKEN_VAR};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

const STATE_VAR: &str = "SHEEPDOG_TEST_HOST_STATE";
const FLEET_VAR: &str = "SHEEPDOG_TEST_HOST_FLEET";
const READY: &str = "sheepdog-test-host-ready";

/// Not a test: the entry point of the host process the other tests start. Ignored, so that
/// it runs only when they ask for it; run by hand, it says so and does nothing.
#[test]
#[ignore]
fn serve() {
    let (Some(state), Some(fleet)) = (std::env::var_os(STATE_VAR), std::env::var_os(FLEET_VAR))
    else {
        println!("serve is the host process of the cli tests, not a test: skipped");
        return;
    };
    let token = std::env::var(TOKEN_VAR).expect("the host's children carry a token");
    let fleet = sheepdog::Fleet::from_toml_file(&fleet).expect("a fleet file");
    let fleet = sheepdog::Fleet::new(
        fleet
            .services()
            .iter()
            .map(|s| s.clone().env(TOKEN_VAR, &token)),
    );
    let sup = sheepdog::Supervisor::builder()
        .state_dir(&state)
        .group_readable_logs(std::env::var_os("SHEEPDOG_TEST_GROUP_LOGS").is_some())
        .open()
        .expect("open the host's supervisor");
    let applied = sup
        .apply(&fleet, sheepdog::Prune::No)
        .expect("apply the fleet");
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    println!("{READY}");
    // Until the test closes our stdin (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    sup.shutdown().expect("shut down");
}

/// A running host process, its state directory and registration directory.
pub struct Host {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pub dir: tempfile::TempDir,
    pub token: String,
}

impl Host {
    /// Starts a host of `fleet` (TOML) and waits until it has applied it.
    pub fn start(fleet: &str) -> Host {
        Host::start_with(fleet, |_| {})
    }

    pub fn start_with(fleet: &str, configure: impl FnOnce(&mut Command)) -> Host {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let token = common::new_token();
        let fleet_file = dir.path().join("fleet.toml");
        std::fs::write(&fleet_file, fleet).unwrap();
        let mut host = Host {
            child: None,
            stdin: None,
            dir,
            token,
        };
        host.launch(configure);
        host
    }

    /// (Re)starts the host process on the same state directory.
    pub fn launch(&mut self, configure: impl FnOnce(&mut Command)) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "host::serve",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STATE_VAR, self.state())
            .env(FLEET_VAR, self.dir.path().join("fleet.toml"))
            .env(TOKEN_VAR, &self.token)
            .env("SHEEPDOG_RUNTIME_DIR", self.runtime())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().expect("start the host process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(READY) {
                    let _ = tx.send(());
                }
            }
        });
        self.stdin = child.stdin.take();
        self.child = Some(child);
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the host process got ready");
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where this test's hosts register.
    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `sheepdog --state <this host's>` with this test's registration directory.
    pub fn cli(&self) -> assert_cmd::Command {
        let mut c = sheepdog_command(&self.runtime());
        c.arg("--state").arg(self.state());
        c
    }

    /// The same, as a plain process (for streams).
    pub fn cli_process(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sheepdog"));
        c.env("SHEEPDOG_RUNTIME_DIR", self.runtime())
            .env_remove("SHEEPDOG_STATE")
            .arg("--state")
            .arg(self.state());
        c
    }

    /// Shuts the host down (closing its stdin) and waits for it.
    pub fn stop(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let done =
                common::wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
            let status = done.expect("the host process ended within 30 s");
            assert!(status.success(), "the host process failed: {status}");
        }
    }

    /// Kills the host process (SIGKILL), as the OOM killer would; its guardian cleans up.
    pub fn kill(&mut self) {
        // SIGKILL first: a closed stdin would let the host shut down cleanly (and remove its
        // registration) before the signal lands.
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.stdin = None;
    }

    /// Stops the host and proves that nothing it ran is left.
    pub fn finish(mut self) {
        self.stop();
        let left = common::wait_until(Duration::from_secs(5), || {
            common::tagged_processes(&self.token)
                .is_empty()
                .then_some(())
        });
        assert!(
            left.is_some(),
            "leaked processes: {:?}",
            common::tagged_processes(&self.token)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let ended =
                common::wait_until(Duration::from_secs(15), || child.try_wait().ok().flatten());
            if ended.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for pid in common::tagged_processes(&self.token) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// `sheepdog` with `runtime` as its registration directory and no state from the
/// environment.
pub fn sheepdog_command(runtime: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_sheepdog"));
    c.env("SHEEPDOG_RUNTIME_DIR", runtime)
        .env_remove("SHEEPDOG_STATE")
        .env_remove("NO_COLOR")
        .timeout(Duration::from_secs(60));
    c
}

/// Parses the command's stdout as one JSON document.
pub fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
