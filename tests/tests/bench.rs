//! Every `mailgate bench` mode runs briefly against the real program (a smoke test: the
//! benchmarks keep working; no timing is asserted). A run that asks for more connections than
//! the server keeps open from one address uses what it gets and says so.

mod support;

use support::{config_with, run_ok, Gateway};

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_bench_mode_runs_and_respects_the_servers_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = text(&run_ok(
        &[
            "bench",
            "store",
            "--messages",
            "200",
            "--tasks",
            "8",
            "--size",
            "512",
            "--accounts",
            "3",
        ],
        None,
        dir.path(),
    ));
    assert!(
        out.contains("store (sqlite:")
            && out.contains("): 8 tasks")
            && out.contains("into 3 mailbox(es)")
            && out.contains("/s"),
        "{out}"
    );

    let (out, _) = text(&run_ok(
        &[
            "bench",
            "scale",
            "--sizes",
            "200,400",
            "--samples",
            "10",
            "--accounts",
            "10",
        ],
        None,
        dir.path(),
    ));
    for row in [
        "submit (16 at a time)",
        "MMTP CHECK  ",
        "IMMP MBOX INDEX",
        "XHMTP feed",
    ] {
        assert_eq!(
            out.matches(row).count(),
            4,
            "{row} at two sizes, two layouts:\n{out}"
        );
    }

    let config = config_with(dir.path(), "localhost", "requests_per_sec = 0.0")
        .replace("[xhmtp]\n", "[xhmtp]\nnotify_rate_per_sec = 0.0\n");
    let gw = Gateway::start(dir.path(), Some(&config));
    gw.add_user("bob@localhost", "bob-pw");
    // 24 connections asked for; the server keeps 16 from one address (the default).
    let (out, err) = text(&run_ok(
        &[
            "bench",
            "mmtp",
            "--target",
            gw.addr("mmtp.listen"),
            "--to",
            "(bob)%(localhost)",
            "--messages",
            "100",
            "--connections",
            "24",
            "--size",
            "256",
        ],
        None,
        dir.path(),
    ));
    assert!(err.contains("running with 16"), "{err}");
    assert!(out.contains("mmtp: 16 connections to 1 node(s)"), "{out}");
    // Several nodes: the connections are shared out among them (here twice the same one).
    let node = gw.addr("mmtp.listen");
    let (out, _) = text(&run_ok(
        &[
            "bench",
            "mmtp",
            "--target",
            node,
            "--target",
            node,
            "--to",
            "(bob)%(localhost)",
            "--messages",
            "40",
            "--connections",
            "6",
        ],
        None,
        dir.path(),
    ));
    assert!(out.contains("mmtp: 6 connections to 2 node(s)"), "{out}");
    let (out, _) = text(&run_ok(
        &[
            "bench",
            "smtp",
            "--target",
            gw.addr("smtp.listen"),
            "--to",
            "bob@localhost",
            "--messages",
            "60",
            "--connections",
            "4",
            "--size",
            "512",
        ],
        None,
        dir.path(),
    ));
    assert!(
        out.contains("smtp: 4 connections, pipelined transactions") && out.contains("60 in"),
        "{out}"
    );
    let (out, err) = text(&run_ok(
        &[
            "bench",
            "xhmtp",
            "--target",
            gw.addr("xhmtp.listen"),
            "--to",
            "bob@localhost",
            "--password",
            "bob-pw",
            "--notifications",
            "50",
            "--feeds",
            "20",
            "--connections",
            "24",
        ],
        None,
        dir.path(),
    ));
    assert!(err.contains("running with 16"), "{err}");
    assert!(
        out.contains("xhmtp notifications: 16 concurrent") && out.contains("xhmtp feed"),
        "{out}"
    );
    gw.add_user("carol@localhost", "carol-pw");
    let ca = gw.dir.join("data/tls/cert.pem");
    let (out, _) = text(&run_ok(
        &[
            "bench",
            "immp",
            "--target",
            gw.addr("immp.listen"),
            "--ca",
            ca.to_str().unwrap(),
            "--from",
            "carol@localhost",
            "--password",
            "carol-pw",
            "--to",
            "bob@localhost",
            "--messages",
            "50",
            "--connections",
            "4",
            "--size",
            "256",
        ],
        None,
        dir.path(),
    ));
    assert!(
        out.contains("immp: 4 connections, DELIVER/DATA/DONE"),
        "{out}"
    );
}

#[test]
fn the_tmtp_bench_posts_and_every_node_gets_every_post() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "localhost", "") + "registration = \"open\"\n";
    let gw = Gateway::start(dir.path(), Some(&config));
    let ca = gw.dir.join("data/tls/cert.pem");
    let (out, _) = text(&run_ok(
        &[
            "bench",
            "tmtp",
            "--target",
            gw.addr("tmtp.listen"),
            "--ca",
            ca.to_str().unwrap(),
            "--nodes",
            "3",
            "--messages",
            "40",
            "--connections",
            "4",
            "--size",
            "256",
            "--json",
        ],
        None,
        dir.path(),
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["ops"], 40, "{out}");
    // Three nodes, each acknowledging all forty.
    assert_eq!(lines[1]["phase"], "delivery");
    assert_eq!(lines[1]["ops"], 120, "{out}");
}
