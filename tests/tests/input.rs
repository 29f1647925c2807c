//! Bad input to the command line and to the files it names, through the
//! binary as an operator runs it: each case ends with a clear error and a
//! non-zero exit, never a hang or a panic. Needs no root and no namespace.

use std::path::PathBuf;
use std::process::Output;

use tierguard_tests::agent::run_cli;
use tierguard_tests::mkfifo;

fn tmp(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("cli-input", name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Refused with exit code `code` and exactly these stderr lines.
fn assert_refused(out: &Output, code: i32, lines: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().collect::<Vec<_>>(), lines);
}

#[test]
fn special_list_files_and_configs_are_refused_by_every_command() {
    let dir = tmp("special");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        "[[lists]]\nname = \"zero\"\naction = \"deny\"\nfiles = [\"/dev/zero\"]\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let want = format!(
        "error: {c}:4:10: list 'zero': cannot read list file '/dev/zero': it is a character device, not a regular file"
    );
    let want = [want.as_str(), "1 error(s); policy refused"];
    let out = run_cli(&["check", "-c", c, "--skip-interface-check"]);
    assert_refused(&out, 2, &want);
    let out = run_cli(&["matrix", "-c", c]);
    assert_refused(&out, 2, &want);
    let out = run_cli(&[
        "explain",
        "-c",
        c,
        "--src",
        "192.0.2.1",
        "--dst",
        "10.0.0.1",
    ]);
    assert_refused(&out, 2, &want);

    // The config itself a FIFO: `run` refuses before attaching anything.
    let f = fifo.to_str().unwrap();
    let out = run_cli(&["run", "-c", f, "-i", "lo"]);
    let want = format!("error: {f}: cannot read config: it is a FIFO, not a regular file");
    assert_refused(
        &out,
        2,
        &[want.as_str(), "policy refused; nothing was attached"],
    );

    // An audit log to verify that is a device.
    let out = run_cli(&["audit", "verify", "/dev/zero"]);
    assert_refused(
        &out,
        2,
        &["error: cannot read /dev/zero: it is a character device, not a regular file"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watch_interval_is_bounded() {
    // Near u64::MAX the agent's timer overflowed: a panic in the running agent.
    let out = run_cli(&["run", "--watch-interval", "18446744073709551615"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(
            "error: invalid value '18446744073709551615' for '--watch-interval <SECONDS>': 18446744073709551615 is not in 0..=86400"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn block_arguments_are_checked_when_no_agent_answers() {
    // No agent behind this socket: a typo still gets its own error, not
    // "cannot reach the agent". (A reachable agent checks them itself and
    // audits the refusal: tests/tests/limits.rs.)
    let socket = "/nonexistent/tierguard-admin.sock";
    let cases: [(&[&str], &str); 5] = [
        (
            &["block", "banana", "--for", "10m", "--reason", "INC-1"],
            "error: 'banana' is not an IP address or CIDR",
        ),
        (
            &["block", "0.0.0.0/0", "--for", "10m", "--reason", "INC-1"],
            "error: '0.0.0.0/0' would block every source: block narrower prefixes, or use a deny list",
        ),
        (
            &["block", "192.0.2.7", "--for", "soon", "--reason", "INC-1"],
            "error: 'soon' is not a duration: expected seconds or a number with one unit, like 90s, 10m, 2h, 1d",
        ),
        (
            &["block", "192.0.2.7", "--for", "10m", "--reason", " "],
            "error: a reason is required (--reason TEXT): it is kept with the block and in the audit log",
        ),
        (
            &["unblock", "192.0.2.7/33"],
            "error: '192.0.2.7/33' is not a CIDR: prefix length must be 0 to 32",
        ),
    ];
    for (args, want) in cases {
        let mut args = args.to_vec();
        args.extend(["--socket", socket]);
        let out = run_cli(&args);
        assert_refused(&out, 1, &[want]);
    }
    // Valid arguments go on to the socket.
    let out = run_cli(&[
        "block",
        "192.0.2.7",
        "--for",
        "10m",
        "--reason",
        "INC-1",
        "--socket",
        socket,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .starts_with("error: cannot reach the agent at /nonexistent/tierguard-admin.sock"),
        "{}",
        stderr(&out)
    );
}
