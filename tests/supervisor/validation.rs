//! Bad input is a typed error that names the service and the cause, before anything runs.

use crate::common::*;
use sheepdog::{ErrorKind, ServiceSpec, Status};

#[test]
fn bad_names_are_invalid_spec_and_nothing_is_saved() {
    let h = Harness::new();
    for name in [
        "",
        "a b",
        "../etc",
        "x/y",
        ".hidden",
        "123",
        "all",
        "café",
        &"n".repeat(65),
    ] {
        let err = h.sup().start(h.sh(name, "true")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{name:?}: {err}");
        assert_eq!(err.service(), Some(name));
        assert!(err.to_string().contains("invalid name"), "{err}");
    }
    assert!(h.sup().list().unwrap().is_empty());
    h.finish();
}

#[test]
fn nul_bytes_and_bad_env_keys_are_invalid_spec() {
    let h = Harness::new();
    let cases = [
        (h.sh("a", "true").arg("x\0y"), "NUL"),
        (h.sh("a", "true").env("K=V", "1"), "'='"),
        (h.sh("a", "true").env("", "1"), "empty"),
        (h.sh("a", "true").env("K", "a\0b"), "NUL"),
    ];
    for (spec, needle) in cases {
        let err = h.sup().start(spec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(h.sup().list().unwrap().is_empty());
    h.finish();
}

#[test]
fn spawn_errors_say_which_and_leave_the_service_errored() {
    let h = Harness::new();
    let script = h.dir.path().join("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let badshebang = h.dir.path().join("badshebang.sh");
    std::fs::write(&badshebang, "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(
        &badshebang,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cases = [
        (
            ServiceSpec::new("missing", "/no/such/program"),
            "program '/no/such/program' not found",
        ),
        (
            ServiceSpec::new("nopath", "no-such-program-xyz"),
            "not found on PATH",
        ),
        (
            ServiceSpec::new("noexec", script.to_str().unwrap()),
            "is not executable",
        ),
        (ServiceSpec::new("dir", "/tmp"), "is a directory"),
        (
            ServiceSpec::new("badcwd", "true").current_dir("/no/such/dir"),
            "working directory '/no/such/dir'",
        ),
        (
            ServiceSpec::new("interp", badshebang.to_str().unwrap()),
            "interpreter",
        ),
    ];
    for (spec, needle) in cases {
        let name = spec.name().to_string();
        let err = h.sup().start(spec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Spawn, "{name}: {err}");
        assert_eq!(err.service(), Some(name.as_str()));
        assert!(err.to_string().contains(needle), "{name}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("service '{name}': cannot start")),
            "{err}"
        );
        let info = h.sup().describe(&name).unwrap();
        assert_eq!(
            info.status(),
            Status::Errored,
            "{name}: the definition is kept, errored"
        );
    }
    h.finish();
}

#[test]
fn a_program_on_the_specs_own_path_is_found() {
    let h = Harness::new();
    let bin = h.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("my-tool");
    std::fs::write(&tool, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = ServiceSpec::new("tool", "my-tool")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env(TOKEN_VAR, &h.token);
    let info = h.sup().start(spec).unwrap();
    assert_eq!(info.status(), Status::Online);
    h.finish();
}

#[test]
fn unknown_targets_are_not_found() {
    let h = Harness::new();
    for call in [
        h.sup().stop("nope"),
        h.sup().restart("nope"),
        h.sup().delete("nope"),
        h.sup().stop("999"),
    ] {
        assert_eq!(call.unwrap_err().kind(), ErrorKind::NotFound);
    }
    let err = h.sup().describe("nope").unwrap_err();
    assert_eq!(err.to_string(), "service 'nope': no such service");
    assert_eq!(h.sup().stop("all").unwrap(), 0, "all of nothing is fine");
    h.finish();
}

/// Limits the kernel cannot take are refused as the spec's fault, in every containment tier,
/// and `restart_with` names follow the rules of names, as `after` names do.
#[test]
fn impossible_limits_and_bad_restart_with_names_are_invalid_spec() {
    let h = Harness::new();
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
        let err = h.sup().start(spec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
        assert_eq!(err.service(), Some("a"));
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(h.sup().list().unwrap().is_empty());
    h.finish();
}
