use std::path::Path;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::load_str(text, "p.toml", Path::new("/nonexistent"))
}

fn only_error(text: &str) -> ConfigError {
    let errs = load(text).expect_err("config should be refused").0;
    assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default().expect("default config loads");
    assert_eq!(c.origin, EMBEDDED_NAME);
    assert!(c.lists.iter().any(|l| l.action == ListAction::Deny));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load("").unwrap();
    assert!(c.agent.interfaces.is_empty());
    assert_eq!(c.agent.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(c.agent.metrics_address.to_string(), DEFAULT_METRICS_ADDRESS);
    assert_eq!(c.agent.pin_path, Path::new(DEFAULT_PIN_PATH));
}

#[test]
fn inline_lists_parse() {
    let c = load(
        r#"
[agent]
interfaces = ["eth0", "eth1"]
xdp_mode = "generic"
metrics_address = "127.0.0.1:9000"

[[lists]]
name = "blocked"
action = "deny"
cidrs = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]

[[lists]]
name = "partners"
action = "allow"
description = "exceptions"
cidrs = ["192.0.2.128/25"]
"#,
    )
    .unwrap();
    assert_eq!(c.agent.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.agent.xdp_mode, XdpModeSetting::Generic);
    assert_eq!(c.lists.len(), 2);
    assert_eq!(c.lists[0].prefixes.len(), 3);
    assert_eq!(c.lists[1].action, ListAction::Allow);
    assert_eq!(c.prefix_counts(), (3, 1));
    assert_eq!(c.lists[0].origin.line, 8);
}

#[test]
fn unknown_key_is_an_error_with_position() {
    let e = only_error("[agent]\ninterfaces = []\ncolour = \"red\"\n");
    assert_eq!((e.line, e.column), (3, 1));
    assert!(
        e.message.contains("unknown field `colour`"),
        "{}",
        e.message
    );
}

#[test]
fn unknown_top_level_table_is_an_error() {
    let e = only_error("[agnet]\n");
    assert_eq!(e.line, 1);
    assert!(e.message.contains("agnet"), "{}", e.message);
}

#[test]
fn syntax_error_has_position() {
    let e = only_error("[agent]\ninterfaces = [\"eth0\"\n");
    assert!(e.line >= 2, "{e}");
}

#[test]
fn bad_cidrs_are_all_reported() {
    let errs = load(
        "[[lists]]\nname = \"x\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/33\", \"ok\", \"10.0.0.0/8\", \"fe80::1/200\"]\n",
    )
    .unwrap_err()
    .0;
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (4, 10));
    assert!(errs[0].message.contains("0 to 32"));
    assert!(errs[1].message.contains("'ok'"));
    assert!(errs[2].message.contains("0 to 128"));
}

#[test]
fn duplicate_list_names_are_refused() {
    let e = only_error(
        "[[lists]]\nname = \"a\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n\
         [[lists]]\nname = \"a\"\naction = \"allow\"\ncidrs = [\"10.1.0.0/16\"]\n",
    );
    assert_eq!(e.line, 6);
    assert!(
        e.message
            .contains("duplicate list name 'a' (first defined at line 2)"),
        "{e}"
    );
}

#[test]
fn bad_action_is_refused() {
    let e = only_error("[[lists]]\nname = \"a\"\naction = \"reject\"\ncidrs = [\"10.0.0.0/8\"]\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("unknown variant `reject`"), "{e}");
}

#[test]
fn missing_list_file_is_refused() {
    let e = only_error("[[lists]]\nname = \"a\"\naction = \"deny\"\nfiles = [\"nope.txt\"]\n");
    assert_eq!((e.line, e.column), (4, 10));
    assert!(
        e.message
            .contains("cannot read list file '/nonexistent/nope.txt'"),
        "{e}"
    );
}

#[test]
fn empty_list_is_refused() {
    let e = only_error("[[lists]]\nname = \"a\"\naction = \"deny\"\n");
    assert!(e.message.contains("neither cidrs nor files"), "{e}");
}

#[test]
fn malformed_metrics_address_is_refused() {
    for bad in ["localhost", "1.2.3.4", "1.2.3.4:99999", ":9642"] {
        let e = only_error(&format!("[agent]\nmetrics_address = \"{bad}\"\n"));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not a listen address"), "{bad}: {e}");
    }
}

#[test]
fn bad_interface_names_are_refused() {
    let e = only_error("[agent]\ninterfaces = [\"a/b\"]\n");
    assert!(e.message.contains("not a valid interface name"));
    let e = only_error("[agent]\ninterfaces = [\"eth0\", \"eth0\"]\n");
    assert!(e.message.contains("listed twice"));
    let e = only_error("[agent]\ninterfaces = [\"averyveryverylongname\"]\n");
    assert!(e.message.contains("not a valid interface name"));
}

#[test]
fn bad_xdp_mode_and_relative_pin_path_are_refused() {
    let e = only_error("[agent]\nxdp_mode = \"turbo\"\n");
    assert!(e.message.contains("turbo"));
    let e = only_error("[agent]\npin_path = \"relative/dir\"\n");
    assert!(e.message.contains("absolute"));
}

#[test]
fn flow_capacity_defaults_and_is_bounded() {
    let c = load("").unwrap();
    assert_eq!(
        c.agent.flow_capacity,
        tierguard_common::segment::FLOW_CAPACITY
    );
    for ok in [MIN_FLOW_CAPACITY, 65_536, 100_000, MAX_FLOW_CAPACITY] {
        let c = load(&format!("[agent]\nflow_capacity = {ok}\n")).unwrap();
        assert_eq!(c.agent.flow_capacity, ok);
    }
    for bad in ["1023", "0", "-5", "4194305", "9999999999"] {
        let e = only_error(&format!("[agent]\nflow_capacity = {bad}\n"));
        assert_eq!((e.line, e.column), (2, 17), "{bad}: {e}");
        assert_eq!(
            e.message,
            format!("agent.flow_capacity = {bad} is out of range: expected 1024 to 4194304 flows")
        );
    }
    let e = only_error("[agent]\nflow_capacity = \"big\"\n");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn list_files_in_both_formats_load_and_bad_lines_name_the_file() {
    let dir = std::env::temp_dir().join(format!("tg-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("drop.txt"),
        "; Spamhaus DROP\n1.10.16.0/20 ; SBL256894\n",
    )
    .unwrap();
    std::fs::write(dir.join("plain.txt"), "# ours\n192.0.2.1\n2001:db8::/48\n").unwrap();
    std::fs::write(dir.join("bad.txt"), "10.0.0.0/8\n10.0.0.0/40\n").unwrap();
    let text =
        "[[lists]]\nname = \"feeds\"\naction = \"deny\"\nfiles = [\"drop.txt\", \"plain.txt\"]\n";
    let c = Config::load_str(text, "p.toml", &dir).unwrap();
    assert_eq!(c.lists[0].prefixes.len(), 3);

    let text = "[[lists]]\nname = \"feeds\"\naction = \"deny\"\nfiles = [\"bad.txt\"]\n";
    let errs = Config::load_str(text, "p.toml", &dir).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, dir.join("bad.txt").display().to_string());
    assert_eq!(errs[0].line, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_files_are_the_list_files_then_the_zone_files() {
    let dir = std::env::temp_dir().join(format!("tg-config-data-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "192.0.2.0/24\n").unwrap();
    std::fs::write(dir.join("b.txt"), "198.51.100.0/24\n").unwrap();
    std::fs::write(dir.join("core.txt"), "10.9.0.0/16\n").unwrap();
    let text = "[[lists]]\nname = \"feeds\"\naction = \"deny\"\nfiles = [\"a.txt\", \"b.txt\"]\n\n\
                [[zones]]\nname = \"core\"\nfiles = [\"core.txt\"]\n";
    let c = Config::load_str(text, "p.toml", &dir).unwrap();
    assert_eq!(
        c.data_files(),
        [dir.join("a.txt"), dir.join("b.txt"), dir.join("core.txt")]
    );
    assert_eq!(load("").unwrap().data_files(), Vec::<PathBuf>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_default_off_and_parse() {
    let c = load("").unwrap();
    assert_eq!(c.events, EventsConfig::default());
    assert!(!c.events.enabled);
    let c = load(
        "[events]\nenabled = true\nrate_per_reason = 5\nburst = 10\nglobal_rate = 50\noutput = \"/var/log/tg.jsonl\"\nfile_max_bytes = 65536\nfile_keep = 3\n",
    )
    .unwrap();
    assert!(c.events.enabled);
    assert_eq!(
        (
            c.events.rate_per_reason,
            c.events.burst,
            c.events.global_rate
        ),
        (5, 10, 50)
    );
    assert_eq!(
        c.events.output,
        EventOutput::File("/var/log/tg.jsonl".into())
    );
    assert_eq!((c.events.file_max_bytes, c.events.file_keep), (65536, 3));
    let c = load("[events]\noutput = \"stdout\"\n").unwrap();
    assert_eq!(c.events.output, EventOutput::Stdout);
    let c = load("[events]\nrate_per_source = 3\nburst_per_source = 4\n").unwrap();
    assert_eq!(
        (c.events.rate_per_source, c.events.burst_per_source),
        (3, 4)
    );
    assert_eq!(
        (
            EventsConfig::default().rate_per_source,
            EventsConfig::default().burst_per_source
        ),
        (10, 20)
    );
}

#[test]
fn events_bad_values_are_refused_with_their_place() {
    let e = only_error("[events]\nenabled = true\nrate_per_reason = 0\n");
    assert_eq!((e.line, e.column), (3, 19));
    assert!(
        e.message.contains("rate_per_reason = 0 is out of range"),
        "{}",
        e.message
    );
    let e = only_error("[events]\nburst = 99999999999\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("burst"), "{}", e.message);
    let e = only_error("[events]\nrate_per_source = 0\n");
    assert_eq!((e.line, e.column), (2, 19));
    assert!(
        e.message
            .contains("rate_per_source = 0 is out of range: expected 1 to 1000000"),
        "{}",
        e.message
    );
    let e = only_error("[events]\nburst_per_source = 1000001\n");
    assert!(e.message.contains("burst_per_source"), "{}", e.message);
    let e = only_error("[events]\nglobal_rate = -1\n");
    assert!(e.message.contains("global_rate"), "{}", e.message);
    let e = only_error("[events]\nfile_keep = 0\n");
    assert!(e.message.contains("file_keep"), "{}", e.message);
    let e = only_error("[events]\nfile_max_bytes = 10\n");
    assert!(e.message.contains("file_max_bytes"), "{}", e.message);
    let e = only_error("[events]\noutput = \"/var/log/\"\n");
    assert!(e.message.contains("neither"), "{}", e.message);
    let e = only_error("[events]\nrate = 5\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("unknown field"), "{}", e.message);
    // Several problems: all reported.
    let errs = load("[events]\nrate_per_reason = 0\nburst = 0\n")
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 2);
}

#[test]
fn audit_log_must_be_an_absolute_file_path() {
    let c = load("[agent]\naudit_log = \"/var/log/tierguard/audit.jsonl\"\n").unwrap();
    assert_eq!(
        c.agent.audit_log.as_deref(),
        Some(Path::new("/var/log/tierguard/audit.jsonl"))
    );
    let e = only_error("[agent]\naudit_log = \"audit.jsonl\"\n");
    assert_eq!((e.line, e.column), (2, 13));
    assert!(e.message.contains("absolute path"), "{e}");
    assert_eq!(load("").unwrap().agent.audit_log, None);
}

#[test]
fn webhook_keys_parse_with_defaults() {
    let c = load("[events]\nenabled = true\n").unwrap();
    assert_eq!(c.events.webhook, None);
    let c = load("[events]\nwebhook_url = \"http://127.0.0.1:8080/events?src=tg\"\n").unwrap();
    let w = c.events.webhook.expect("webhook set");
    assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", 8080));
    assert_eq!(w.host_header, "127.0.0.1:8080");
    assert_eq!(w.path, "/events?src=tg");
    assert_eq!(w.token, None);
    assert_eq!(
        (w.batch_max, w.flush_ms, w.queue, w.max_attempts),
        (100, 1000, 10_000, 10)
    );
    let c = load(
        "[events]\nwebhook_url = \"http://siem.local\"\nwebhook_batch_max = 5\nwebhook_flush_ms = 50\nwebhook_queue = 7\nwebhook_max_attempts = 2\n",
    )
    .unwrap();
    let w = c.events.webhook.unwrap();
    assert_eq!(
        (w.host.as_str(), w.port, w.path.as_str()),
        ("siem.local", 80, "/")
    );
    assert_eq!(
        (w.batch_max, w.flush_ms, w.queue, w.max_attempts),
        (5, 50, 7, 2)
    );
    let c = load("[events]\nwebhook_url = \"http://[::1]:9/x\"\n").unwrap();
    let w = c.events.webhook.unwrap();
    assert_eq!(
        (w.host.as_str(), w.port, w.host_header.as_str()),
        ("::1", 9, "[::1]:9")
    );
}

#[test]
fn webhook_token_from_file_and_env() {
    let dir = std::env::temp_dir().join(format!("tg-cfg-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, "abc.DEF-123_x=\n").unwrap();
    let c = Config::load_str(
        &format!(
            "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_file = \"{}\"\n",
            good.display()
        ),
        "p.toml",
        &dir,
    )
    .unwrap();
    let w = c.events.webhook.unwrap();
    assert_eq!(w.token.as_ref().unwrap().expose(), "abc.DEF-123_x=");
    assert!(
        !format!("{w:?}").contains("abc.DEF"),
        "token in Debug output"
    );
    // Relative to the config's directory.
    let c = Config::load_str(
        "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_file = \"good\"\n",
        "p.toml",
        &dir,
    )
    .unwrap();
    assert!(c.events.webhook.unwrap().token.is_some());

    // Empty, malformed, unreadable: errors name the file, never the content.
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "secret part\nsecond line\n").unwrap();
    for (file, want) in [
        (empty.clone(), "is empty"),
        (bad.clone(), "malformed"),
        (dir.join("missing"), "cannot read webhook token file"),
    ] {
        let text = format!(
            "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_file = \"{}\"\n",
            file.display()
        );
        let errs = Config::load_str(&text, "p.toml", &dir).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        assert_eq!((e.line, e.column), (3, 22), "{e:?}");
        assert!(e.message.contains(want), "{}", e.message);
        assert!(
            e.message.contains(&file.display().to_string()),
            "{}",
            e.message
        );
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    // SAFETY (edition 2024 marks set_var unsafe): a name only this test uses.
    unsafe { std::env::set_var("TG_TEST_WEBHOOK_TOKEN_4711", "envtoken") };
    let c = load("[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_env = \"TG_TEST_WEBHOOK_TOKEN_4711\"\n").unwrap();
    assert_eq!(
        c.events.webhook.unwrap().token.unwrap().expose(),
        "envtoken"
    );
    let e = only_error(
        "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_env = \"TG_TEST_WEBHOOK_UNSET_4711\"\n",
    );
    assert!(
        e.message.contains("TG_TEST_WEBHOOK_UNSET_4711") && e.message.contains("not set"),
        "{}",
        e.message
    );
    let e = only_error(&format!(
        "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_env = \"TG_TEST_WEBHOOK_TOKEN_4711\"\nwebhook_token_file = \"{}\"\n",
        good.display()
    ));
    assert_eq!(e.line, 4);
    assert!(e.message.contains("mutually exclusive"), "{}", e.message);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn webhook_bad_values_are_refused_with_their_place() {
    let e = only_error("[events]\nwebhook_url = \"https://siem.example/x\"\n");
    assert_eq!((e.line, e.column), (2, 15));
    assert!(e.message.contains("sidecar"), "{}", e.message);
    for url in [
        "ftp://x/",
        "http://",
        "http://host:0/",
        "http://host:70000/",
        "http://a b/",
        "http://u:p@host/",
        "http://[::1/",
    ] {
        let e = only_error(&format!("[events]\nwebhook_url = \"{url}\"\n"));
        assert_eq!(e.line, 2, "{url}");
        assert!(e.message.contains("webhook_url"), "{url}: {}", e.message);
    }
    for (key, v) in [
        ("webhook_batch_max", "0"),
        ("webhook_batch_max", "1000000"),
        ("webhook_flush_ms", "0"),
        ("webhook_flush_ms", "86400000"),
        ("webhook_queue", "0"),
        ("webhook_queue", "-5"),
        ("webhook_queue", "100000000"),
        ("webhook_max_attempts", "0"),
        ("webhook_max_attempts", "1000"),
    ] {
        let e = only_error(&format!(
            "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\n{key} = {v}\n"
        ));
        assert_eq!((e.line, e.column), (3, key.len() + 4), "{key} = {v}");
        assert!(
            e.message.contains(&format!("{key} = {v} is out of range")),
            "{}",
            e.message
        );
    }
    let e = only_error("[events]\nwebhook_queue = 5\n");
    assert!(e.message.contains("webhook_url is not"), "{}", e.message);
    let e = only_error(
        "[events]\nwebhook_url = \"http://127.0.0.1:1/\"\nwebhook_token_env = \"A-B\"\n",
    );
    assert!(
        e.message.contains("not an environment variable name"),
        "{}",
        e.message
    );
    let e = only_error("[events]\nwebhook_token = \"x\"\n");
    assert!(e.message.contains("unknown field"), "{}", e.message);
}
