//! `instances(n)`: n services of one spec, `<name>.0` to `<name>.<n-1>`, each with its index
//! in an environment variable and in `{instance}` placeholders, its own log files, run,
//! restart policy and crash count. The spec's name addresses all of them, `<name>.<k>` one.
//! `scale` adds instances, or removes the highest-numbered (their processes and logs go;
//! the others keep running), and the instances survive a reopen.

use crate::prelude::*;
use sheepdog::{ErrorKind, RestartPolicy, Status, Stream};

fn pids(sup: &sheepdog::Supervisor) -> Vec<(String, Option<u32>)> {
    sup.list()
        .unwrap()
        .into_iter()
        .map(|i| (i.name().to_string(), i.pid()))
        .collect()
}

#[test]
fn each_instance_has_its_index_its_logs_and_its_own_policy() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    let spec = h
        .sh(
            "web",
            "echo index=$NODE_APP_INSTANCE port=$PORT arg=$0; exec sleep 600",
        )
        .arg("{instance+8000}")
        .env("PORT", "90{instance}")
        .instance_var("NODE_APP_INSTANCE")
        .instances(3)
        .restart(RestartPolicy::always().backoff(sheepdog::Backoff::none()));
    let first = sup.start(spec).unwrap();
    assert_eq!((first.name(), first.instance()), ("web.0", Some(0)));
    sup.wait_for("web", Status::Online, SECS_5).unwrap();
    let list = sup.list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name()).collect();
    assert_eq!(names, ["web.0", "web.1", "web.2"]);
    assert!(list.iter().all(|i| i.definition() == "web"));
    for k in 0..3 {
        let log = sup.log_path(&format!("web.{k}"), Stream::Stdout).unwrap();
        assert!(log.ends_with(format!("web.{k}.out.log")));
        let lines = wait_lines(&log, 1, SECS_5)?;
        assert_eq!(lines[0], format!("index={k} port=90{k} arg={}", 8000 + k));
    }
    let err = sup.describe("web").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // A crash of one instance restarts that one alone.
    let before = pids(sup);
    let victim = sup.describe("web.1").unwrap().pid().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    wait_until(SECS_5, || {
        let info = sup.describe("web.1").ok()?;
        (info.restarts() == 1 && info.status() == Status::Online).then_some(())
    })
    .expect("web.1 restarted");
    let after = pids(sup);
    assert_ne!(after[1], before[1]);
    assert_eq!(
        (after[0].clone(), after[2].clone()),
        (before[0].clone(), before[2].clone())
    );
    assert_eq!(sup.describe("web.0").unwrap().restarts(), 0);
    // One instance, or all of them.
    assert_eq!(sup.stop("web.2").unwrap(), 1);
    assert_eq!(status(sup, "web.2"), Status::Stopped);
    assert_eq!(status(sup, "web.0"), Status::Online);
    assert_eq!(sup.stop("web").unwrap(), 3);
    assert!(
        sup.list()
            .unwrap()
            .iter()
            .all(|i| i.status() == Status::Stopped)
    );
    h.finish()
}

#[test]
fn scale_adds_instances_and_removes_the_highest_numbered() -> TestResult {
    let mut h = Harness::new()?;
    let spec = h
        .sh("pool", "echo $SHEEPDOG_INSTANCE; exec sleep 600")
        .instances(2);
    h.sup().start(spec).unwrap();
    let kept = pids(h.sup());
    assert_eq!(h.sup().scale("pool", 4).unwrap(), 2);
    h.sup().wait_for("pool", Status::Online, SECS_5).unwrap();
    assert_eq!(pids(h.sup()).len(), 4);
    assert_eq!(&pids(h.sup())[..2], &kept[..], "the first two kept running");
    let log3 = h.sup().log_path("pool.3", Stream::Stdout).unwrap();
    assert_eq!(wait_lines(&log3, 1, SECS_5)?, ["3"]);
    let doomed: Vec<u32> = pids(h.sup())[1..].iter().filter_map(|(_, p)| *p).collect();
    assert_eq!(h.sup().scale("pool", 1).unwrap(), 3);
    assert_eq!(
        pids(h.sup()),
        kept[..1].to_vec(),
        "pool.0 alone, still the same run"
    );
    for pid in doomed {
        assert!(!is_alive(pid), "{pid} outlived its instance");
    }
    assert!(!log3.exists(), "a removed instance's logs go with it");
    assert_eq!(
        h.sup().scale("pool.0", 2).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        h.sup().scale("pool", 0).unwrap_err().kind(),
        ErrorKind::InvalidSpec
    );
    h.sup().scale("pool", 3).unwrap();
    h.reopen().unwrap();
    h.sup().wait_for("pool", Status::Online, SECS_10).unwrap();
    let names: Vec<String> = pids(h.sup()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["pool.0", "pool.1", "pool.2"],
        "kept across a reopen"
    );
    assert_eq!(
        h.sup().describe("pool.2").unwrap().spec().get_instances(),
        Some(3)
    );
    h.finish()
}

#[test]
fn instance_names_belong_to_their_service() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    sup.start(h.sh("web", "exec sleep 600").instances(2))
        .unwrap();
    let err = sup.start(h.sh("web.1", "exec sleep 600")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(
        err.to_string().contains("taken by an instance of 'web'"),
        "{err}"
    );
    let err = sup.delete("web.1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // A dependency on one instance, or on all of them.
    let dependent = h
        .sh("probe", "exec sleep 600")
        .after("web.1", sheepdog::Condition::Started);
    assert_eq!(sup.start(dependent).unwrap().status(), Status::Online);
    assert_eq!(sup.plan_stop("all").unwrap(), [vec!["probe"], vec!["web"]]);
    assert_eq!(sup.delete("web").unwrap_err().kind(), ErrorKind::InUse);
    assert_eq!(sup.delete("all").unwrap(), 3);
    h.finish()
}

#[test]
fn apply_scales_when_only_the_number_changes_and_rolls_other_changes() -> TestResult {
    let h = Harness::new()?;
    let fleet = |n: u32, script: &str| {
        sheepdog::Fleet::new([h
            .sh("api", script)
            .ready(sheepdog::Ready::LogLine("^up$".into()))
            .instances(n)])
    };
    let applied = h
        .sup()
        .apply(&fleet(2, "echo up; exec sleep 600"), sheepdog::Prune::Yes)
        .unwrap();
    assert_eq!(applied.started, ["api"]);
    h.sup().wait_for("api", Status::Online, SECS_5).unwrap();
    let before = pids(h.sup());
    let applied = h
        .sup()
        .apply(&fleet(3, "echo up; exec sleep 600"), sheepdog::Prune::Yes)
        .unwrap();
    assert_eq!(applied.scaled, ["api"]);
    assert_eq!(
        &pids(h.sup())[..2],
        &before[..],
        "scaled: the others kept running"
    );
    h.sup().wait_for("api", Status::Online, SECS_5).unwrap();
    let applied = h
        .sup()
        .apply(&fleet(3, "echo up; exec sleep 601"), sheepdog::Prune::Yes)
        .unwrap();
    assert_eq!(applied.restarted, ["api"]);
    for info in h.sup().list().unwrap() {
        assert_eq!(
            info.status(),
            Status::Online,
            "{} rolled in and ready",
            info.name()
        );
        assert_eq!(info.spec().get_args()[1], "echo up; exec sleep 601");
    }
    let applied = h
        .sup()
        .apply(&sheepdog::Fleet::new([]), sheepdog::Prune::Yes)
        .unwrap();
    assert_eq!(applied.deleted, ["api"], "pruned as one service");
    assert!(h.sup().list().unwrap().is_empty());
    h.finish()
}

#[test]
fn the_crash_loop_limit_applies_to_each_instance_alone() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    let spec = h
        .sh(
            "pool",
            "if [ \"$SHEEPDOG_INSTANCE\" = 1 ]; then exit 1; fi; exec sleep 600",
        )
        .instances(3)
        .restart(
            RestartPolicy::always()
                .backoff(sheepdog::Backoff::none())
                .max_restarts(2, std::time::Duration::from_secs(60)),
        );
    sup.start(spec).unwrap();
    sup.wait_for("pool.1", Status::Errored, SECS_10).unwrap();
    let looped = sup.describe("pool.1").unwrap();
    assert_eq!(
        looped.restarts(),
        2,
        "its own limit, reached by its own crashes"
    );
    assert_eq!(looped.last_exit().unwrap().code(), Some(1));
    for name in ["pool.0", "pool.2"] {
        let info = sup.describe(name).unwrap();
        assert_eq!(
            info.status(),
            Status::Online,
            "{name} is not in a crash loop"
        );
        assert_eq!(info.restarts(), 0, "{name}");
        assert_eq!(info.generation(), 1, "{name} kept its first run");
    }
    h.finish()
}
