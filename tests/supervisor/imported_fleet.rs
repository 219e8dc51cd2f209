//! One imported fleet end to end: a supervisord file with two programs (one of them two
//! processes) applied to a real supervisor, running real children with the environment,
//! directory and log settings the file gave them.

use crate::prelude::*;
use sheepdog::{Fleet, Prune, Status, Stream};

#[test]
fn a_supervisord_fleet_applied_runs_as_its_file_says() -> TestResult {
    let h = Harness::new()?;
    let work = h.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let conf = h.dir.path().join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\n\n\
             [program:worker]\n\
             command=/bin/sh -c \"echo worker %(process_num)d in $(pwd) with $QUEUE; exec sleep 600\"\n\
             process_name=%(program_name)s-%(process_num)d\n\
             numprocs=2\n\
             directory=%(here)s/work\n\
             environment=QUEUE=\"jobs, urgent\",{TOKEN_VAR}=\"{token}\"\n\
             redirect_stderr=true\n\
             stopsignal=INT\n\n\
             [program:once]\n\
             command=/bin/sh -c 'echo done >&2'\n\
             environment={TOKEN_VAR}=\"{token}\"\n\
             autorestart=false\n",
            token = h.token
        ),
    )
    .unwrap();
    let fleet = Fleet::load(&conf, None, None).unwrap();
    let applied = h.sup().apply(&fleet, Prune::No).unwrap();
    assert_eq!(applied.started, ["once", "worker-0", "worker-1"]);
    let work = work.canonicalize().unwrap();
    for n in 0..2 {
        let name = format!("worker-{n}");
        h.sup().wait_for(&name, Status::Online, SECS_5).unwrap();
        let expected = format!("worker {n} in {} with jobs, urgent", work.display());
        let log = h.sup().log_path(&name, Stream::Stdout).unwrap();
        assert_eq!(wait_lines(&log, 1, SECS_5)?, [expected]);
    }
    h.sup().wait_for("once", Status::Exited, SECS_5).unwrap();
    let runs = h.sup().history("once", 5).unwrap();
    assert_eq!(runs.len(), 1, "autorestart=false: one run");
    assert_eq!(runs[0].last_stderr(), "done\n");
    h.finish()
}
