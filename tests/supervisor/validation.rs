//! Bad input is a typed error that names the service and the cause, before anything runs:
//! invalid names, NUL bytes and bad environment keys, impossible limits and `restart_with`
//! names are `InvalidSpec` (nothing saved); a program that cannot start is a `Spawn` error
//! (the definition kept, errored); an unknown target is `NotFound`.

use crate::prelude::*;
use sheepdog::{ErrorKind, ServiceSpec, Status};
use std::os::unix::fs::PermissionsExt;

#[test]
fn bad_names_are_invalid_spec_and_nothing_is_saved() -> TestResult {
    let h = Harness::new()?;
    let long = "n".repeat(65);
    for name in [
        "", "a b", "../etc", "x/y", ".hidden", "123", "all", "café", &long,
    ] {
        let err = h
            .sup()
            .start(h.sh(name, "true"))
            .err()
            .context(format!("{name:?} is refused"))?;
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{name:?}: {err}");
        assert_eq!(err.service(), Some(name), "the error names the service");
        assert!(err.to_string().contains("invalid name"), "the cause: {err}");
    }
    assert!(h.sup().list()?.is_empty(), "nothing was saved");
    h.finish()
}

#[test]
fn nul_bytes_and_bad_env_keys_are_invalid_spec() -> TestResult {
    let h = Harness::new()?;
    let cases = [
        (h.sh("a", "true").arg("x\0y"), "NUL"),
        (h.sh("a", "true").env("K=V", "1"), "'='"),
        (h.sh("a", "true").env("", "1"), "empty"),
        (h.sh("a", "true").env("K", "a\0b"), "NUL"),
    ];
    for (spec, needle) in cases {
        let err = h
            .sup()
            .start(spec)
            .err()
            .context(format!("a spec with {needle} is refused"))?;
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
        assert!(
            err.to_string().contains(needle),
            "the cause, {needle}: {err}"
        );
    }
    assert!(h.sup().list()?.is_empty(), "nothing was saved");
    h.finish()
}

#[test]
fn spawn_errors_say_which_and_leave_the_service_errored() -> TestResult {
    let h = Harness::new()?;
    let script = h.dir.path().join("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n")?;
    let badshebang = h.dir.path().join("badshebang.sh");
    std::fs::write(&badshebang, "#!/no/such/interpreter\n")?;
    std::fs::set_permissions(&badshebang, std::fs::Permissions::from_mode(0o755))?;
    let cases = [
        (
            ServiceSpec::new("missing", "/no/such/program"),
            "program '/no/such/program' not found",
        ),
        (
            ServiceSpec::new("nopath", "no-such-program-xyz"),
            "not found on PATH",
        ),
        (ServiceSpec::new("noexec", &script), "is not executable"),
        (ServiceSpec::new("dir", "/tmp"), "is a directory"),
        (
            ServiceSpec::new("badcwd", "true").current_dir("/no/such/dir"),
            "working directory '/no/such/dir'",
        ),
        (ServiceSpec::new("interp", &badshebang), "interpreter"),
    ];
    for (spec, needle) in cases {
        let name = spec.name().to_string();
        let err = h
            .sup()
            .start(spec)
            .err()
            .context(format!("{name} cannot start"))?;
        assert_eq!(err.kind(), ErrorKind::Spawn, "{name}: {err}");
        assert_eq!(
            err.service(),
            Some(name.as_str()),
            "the error names the service"
        );
        assert!(err.to_string().contains(needle), "{name}: the cause: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("service '{name}': cannot start")),
            "one phrase naming the service: {err}"
        );
        assert_eq!(
            h.sup().describe(&name)?.status(),
            Status::Errored,
            "{name}: the definition is kept, errored"
        );
    }
    h.finish()
}

#[test]
fn a_program_on_the_specs_own_path_is_found() -> TestResult {
    let h = Harness::new()?;
    let bin = h.dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let tool = bin.join("my-tool");
    std::fs::write(&tool, "#!/bin/sh\nexec sleep 60\n")?;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
    let spec = ServiceSpec::new("tool", "my-tool")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env(TOKEN_VAR, &h.token);
    let info = h.sup().start(spec)?;
    assert_eq!(info.status(), Status::Online, "found on the spec's PATH");
    h.finish()
}

#[test]
fn unknown_targets_are_not_found() -> TestResult {
    let h = Harness::new()?;
    for (call, result) in [
        ("stop", h.sup().stop("nope")),
        ("restart", h.sup().restart("nope")),
        ("delete", h.sup().delete("nope")),
        ("stop by id", h.sup().stop("999")),
    ] {
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "{call} of an unknown target"
        );
    }
    let err = h
        .sup()
        .describe("nope")
        .err()
        .context("describe of an unknown service fails")?;
    assert_eq!(
        err.to_string(),
        "service 'nope': no such service",
        "the message"
    );
    assert_eq!(h.sup().stop("all")?, 0, "all of nothing is fine");
    h.finish()
}

/// Limits the kernel cannot take are refused as the spec's fault, in every containment tier,
/// and `restart_with` names follow the rules of names, as `after` names do.
fn impossible_limits_and_bad_restart_with_names_are_invalid_spec(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let cases = [
        (h.sh("a", "true").max_pids(u64::MAX), "max_pids"),
        (h.sh("a", "true").max_pids(4_194_305), "max_pids"),
        (h.sh("a", "true").max_memory(0), "max_memory"),
        (
            h.sh("a", "true").restart_with("../x"),
            "restart_with '../x'",
        ),
        (h.sh("a", "true").restart_with("all"), "restart_with 'all'"),
    ];
    for (spec, needle) in cases {
        let err = h
            .sup()
            .start(spec)
            .err()
            .context(format!("{tier}: a spec with a bad {needle} is refused"))?;
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{tier}: {err}");
        assert_eq!(err.service(), Some("a"), "the error names the service");
        assert!(err.to_string().contains(needle), "{tier}: the cause: {err}");
    }
    assert!(h.sup().list()?.is_empty(), "{tier}: nothing was saved");
    h.finish()
}

per_tier!(impossible_limits_and_bad_restart_with_names_are_invalid_spec);
