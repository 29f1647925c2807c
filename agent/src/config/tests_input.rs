//! Bad input to the config and the files it names: special files, sizes,
//! encodings, control characters. Each gets a clear error, never a hang.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::files::mkfifo;

/// A fresh directory for one test.
fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tg-input-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn list_with(file: &str) -> String {
    format!("[[lists]]\nname = \"feeds\"\naction = \"deny\"\nfiles = [\"{file}\"]\n")
}

fn errors(text: &str, base: &Path) -> Vec<String> {
    Config::load_str(text, "p.toml", base)
        .expect_err("config should be refused")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn list_and_zone_files_that_are_not_regular_files_are_refused() {
    // Before: /dev/zero was read without end and a FIFO blocked the open.
    let dir = tmp("special");
    mkfifo(&dir.join("fifo"));
    std::fs::create_dir(dir.join("sub")).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    for (file, what) in [
        ("/dev/zero", "a character device"),
        ("fifo", "a FIFO"),
        ("sub", "a directory"),
        ("sock", "a socket"),
    ] {
        let shown = dir.join(file).display().to_string();
        assert_eq!(
            errors(&list_with(file), &dir),
            [format!(
                "p.toml:4:10: list 'feeds': cannot read list file '{shown}': it is {what}, not a regular file"
            )]
        );
    }
    let zone = "[[zones]]\nname = \"core\"\nfiles = [\"fifo\"]\n";
    assert_eq!(
        errors(zone, &dir),
        [format!(
            "p.toml:3:10: zone 'core': cannot read zone file '{}': it is a FIFO, not a regular file",
            dir.join("fifo").display()
        )]
    );
    drop(sock);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused() {
    let dir = tmp("config");
    mkfifo(&dir.join("p.toml"));
    let e = Config::load_file(&dir.join("p.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read config: it is a FIFO, not a regular file",
            dir.join("p.toml").display()
        )
    );
    let e = Config::load_file(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/dev/zero: cannot read config: it is a character device, not a regular file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_over_the_cap_is_refused() {
    let dir = tmp("bigconfig");
    let path = dir.join("p.toml");
    // Sparse: the size is what is checked, before reading.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(files::MAX_CONFIG_BYTES + 1).unwrap();
    assert_eq!(
        Config::load_file(&path).unwrap_err().to_string(),
        format!(
            "{}: cannot read config: it is 67108865 bytes, more than the 67108864 bytes (64 MiB) accepted",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_list_file_over_the_cap_is_refused() {
    let dir = tmp("biglist");
    let f = std::fs::File::create(dir.join("huge.txt")).unwrap();
    f.set_len(files::MAX_LIST_FILE_BYTES + 1).unwrap();
    assert_eq!(
        errors(&list_with("huge.txt"), &dir),
        [format!(
            "p.toml:4:10: list 'feeds': cannot read list file '{}': it is 268435457 bytes, more than the 268435456 bytes (256 MiB) accepted",
            dir.join("huge.txt").display()
        )]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn encodings_bom_crlf_and_invalid_utf8() {
    let dir = tmp("encodings");
    // A byte order mark and CRLF line ends, in the config and in a list file.
    std::fs::write(
        dir.join("bom.txt"),
        b"\xef\xbb\xbf10.0.0.0/8\r\n192.0.2.0/24\r\n",
    )
    .unwrap();
    let config = format!("\u{feff}{}", list_with("bom.txt").replace('\n', "\r\n"));
    std::fs::write(dir.join("p.toml"), config).unwrap();
    let c = Config::load_file(&dir.join("p.toml")).unwrap();
    let got: Vec<String> = c.lists[0]
        .prefixes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["10.0.0.0/8", "192.0.2.0/24"]);

    // Invalid UTF-8: placed at the first bad byte, in the file it is in.
    std::fs::write(dir.join("bad.txt"), b"10.0.0.0/8\n1.2.3.\xff\n").unwrap();
    assert_eq!(
        errors(&list_with("bad.txt"), &dir),
        [format!(
            "{}:2:7: list 'feeds': not valid UTF-8 (byte 0xff)",
            dir.join("bad.txt").display()
        )]
    );
    std::fs::write(dir.join("p.toml"), b"mode = \"enf\xc3orce\"\n").unwrap();
    assert_eq!(
        Config::load_file(&dir.join("p.toml"))
            .unwrap_err()
            .to_string(),
        format!(
            "{}:1:12: cannot read config: not valid UTF-8 (byte 0xc3)",
            dir.join("p.toml").display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nul_bytes_and_control_characters_stay_on_one_line() {
    let dir = tmp("nul");
    std::fs::write(dir.join("nul.txt"), b"10.0.0.0/8\n1.2.3.4\0\n\x1b[2J\n").unwrap();
    let shown = dir.join("nul.txt").display().to_string();
    assert_eq!(
        errors(&list_with("nul.txt"), &dir),
        [
            format!("{shown}:2:1: '1.2.3.4\\u{{0}}' is not an IP address or CIDR"),
            format!("{shown}:3:1: '\\u{{1b}}[2J' is not an IP address or CIDR"),
        ]
    );
    // A newline in a name (a TOML escape) is shown escaped.
    assert_eq!(
        errors(
            "[[lists]]\nname = \"a\\nb\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n",
            &dir
        ),
        [
            "p.toml:2:8: list name 'a\\nb' must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn long_lines_are_clipped_and_bad_lines_capped_per_file() {
    let dir = tmp("long");
    let long = "1".repeat(5_000_000);
    std::fs::write(dir.join("long.txt"), format!("{long}\n{long} x\n")).unwrap();
    let shown = dir.join("long.txt").display().to_string();
    let start = "1".repeat(48);
    assert_eq!(
        errors(&list_with("long.txt"), &dir),
        [
            format!(
                "{shown}:1:1: '{start}... (5000000 characters)' is too long to be an IP address or CIDR"
            ),
            format!(
                "{shown}:2:1: expected one address or CIDR per line, found '{start}... (5000002 characters)'"
            ),
        ]
    );

    // An HTML page or a binary saved as a list: 100 errors, then a count.
    let junk: String = (0..100_000).map(|i| format!("junk{i}\n")).collect();
    std::fs::write(dir.join("junk.txt"), junk).unwrap();
    let errs = errors(&list_with("junk.txt"), &dir);
    let shown = dir.join("junk.txt").display().to_string();
    assert_eq!(errs.len(), MAX_FILE_ERRORS + 1);
    assert_eq!(
        errs[0],
        format!("{shown}:1:1: 'junk0' is not an IP address or CIDR")
    );
    assert_eq!(
        errs[MAX_FILE_ERRORS],
        format!("{shown}: 99900 more bad lines not shown (the first 100 are)")
    );

    // Millions of comment lines are only comments.
    let comments: String = (0..2_000_000).map(|i| format!("# {i}\n")).collect();
    std::fs::write(dir.join("comments.txt"), comments + "192.0.2.0/24\n").unwrap();
    let c = Config::load_str(&list_with("comments.txt"), "p.toml", &dir).unwrap();
    assert_eq!(c.lists[0].prefixes.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_webhook_token_file_that_is_a_device_is_refused() {
    let text =
        "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_file = \"/dev/zero\"\n";
    assert_eq!(
        errors(text, Path::new("/nonexistent")),
        [
            "p.toml:3:22: cannot read webhook token file /dev/zero: it is a character device, not a regular file"
        ]
    );
}

#[test]
fn the_largest_rule_set_loads_and_one_more_is_refused_with_the_limit() {
    // Placing each rule counted lines from the start of the text and
    // searched the rules so far for its name: 65,535 rules took minutes.
    let rules = |n: usize| -> String {
        let mut t = String::from("[[zones]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n");
        for i in 0..n {
            t += &format!(
                "[[rules]]\nname = \"r{i}\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"tcp\"\nports = [{}]\naction = \"allow\"\n",
                i % 65536
            );
        }
        t
    };
    let host = Vec::new();
    let c = Config::load_str(&rules(65_535), "p.toml", Path::new("/nonexistent")).unwrap();
    assert_eq!(c.rules[65_534].origin.line, 5 + 7 * 65_534);
    assert!(crate::policy::CompiledPolicy::compile(&c, &host).is_ok());
    let c = Config::load_str(&rules(65_536), "p.toml", Path::new("/nonexistent")).unwrap();
    let e = crate::policy::CompiledPolicy::compile(&c, &host)
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "p.toml: 65536 rules; at most 65535 fit: 1 too many"
    );
}

#[test]
fn a_value_where_a_table_belongs_names_the_table() {
    for (text, place, want) in [
        (
            "zones = [1]",
            "1:10",
            "invalid type: integer `1`, expected a [[zones]] table",
        ),
        (
            "rules = [\"a\"]",
            "1:10",
            "invalid type: string \"a\", expected a [[rules]] table",
        ),
        (
            "failsafe = 1",
            "1:12",
            "invalid type: integer `1`, expected the [failsafe] table",
        ),
        (
            "[failsafe]\nallow = [1]",
            "2:10",
            "invalid type: integer `1`, expected a [[failsafe.allow]] table",
        ),
        (
            "limits = [true]",
            "1:11",
            "invalid type: boolean `true`, expected a [[limits]] table",
        ),
        (
            "segmentation = 1",
            "1:16",
            "invalid type: integer `1`, expected the [segmentation] table",
        ),
        (
            "flows = \"x\"",
            "1:9",
            "invalid type: string \"x\", expected the [flows] table",
        ),
        (
            "events = 1",
            "1:10",
            "invalid type: integer `1`, expected the [events] table",
        ),
        (
            "agent = 5",
            "1:9",
            "invalid type: integer `5`, expected the [agent] table",
        ),
        (
            "lists = [1]",
            "1:10",
            "invalid type: integer `1`, expected a [[lists]] table",
        ),
    ] {
        assert_eq!(
            errors(text, Path::new("/nonexistent")),
            [format!("p.toml:{place}: {want}")]
        );
    }
}
