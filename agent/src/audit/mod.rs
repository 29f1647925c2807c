//! The audit trail of policy changes: one JSON line per start and reload
//! (applied, refused or unchanged), chained by SHA-256 so that an edited,
//! removed or reordered line is detectable (`tierguard audit verify`).
//!
//! Each line is a JSON object whose `prev` is the previous line's `hash`, and
//! whose `hash` is the SHA-256 of the line's own JSON without `hash`. The
//! chain continues across agent restarts: the agent reads the last line.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::config::files::{ReadError, read_bounded};

/// `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash a line must carry: over its JSON without the `hash` field.
fn line_hash(record: &Map<String, Value>) -> String {
    sha256_hex(Value::Object(record.clone()).to_string().as_bytes())
}

/// An append-only, hash-chained audit file.
pub struct AuditLog {
    path: PathBuf,
    prev: String,
    seq: u64,
}

impl AuditLog {
    /// Opens `path`, continuing the chain of its last line (or starting one).
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        let (prev, seq) = match read_log(path) {
            Ok(text) => match text.lines().rev().find(|l| !l.trim().is_empty()) {
                Some(last) => {
                    let v: Value = serde_json::from_str(last).map_err(|e| {
                        format!(
                            "{}: last line is not JSON ({e}); refusing to extend the chain",
                            path.display()
                        )
                    })?;
                    let hash = v["hash"]
                        .as_str()
                        .ok_or_else(|| format!("{}: last line has no hash", path.display()))?;
                    (hash.to_string(), v["seq"].as_u64().unwrap_or(0))
                }
                None => (GENESIS.to_string(), 0),
            },
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                (GENESIS.to_string(), 0)
            }
            Err(e) => return Err(format!("cannot read audit log {}: {e}", path.display())),
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            prev,
            seq,
        })
    }

    /// Appends one record (fields of `record` plus seq, prev and hash).
    pub fn append(&mut self, record: Map<String, Value>) -> Result<(), String> {
        let mut r = record;
        r.insert("seq".into(), json!(self.seq + 1));
        r.insert("prev".into(), json!(self.prev));
        let hash = line_hash(&r);
        r.insert("hash".into(), json!(hash));
        let line = Value::Object(r).to_string();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open audit log {}: {e}", self.path.display()))?;
        writeln!(f, "{line}")
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("cannot write audit log {}: {e}", self.path.display()))?;
        self.seq += 1;
        self.prev = hash;
        Ok(())
    }
}

/// What changed between two policies, by list name.
pub fn summary(old: Option<&Config>, new: Option<&Config>) -> Value {
    // Each named item as a string of what it enforces (not where it is
    // written: moving a rule in the file changes nothing).
    let lists = |c: &Config| -> BTreeMap<String, String> {
        c.lists
            .iter()
            .map(|l| {
                let prefixes: Vec<String> = l.prefixes.iter().map(ToString::to_string).collect();
                (
                    l.name.clone(),
                    format!("{} {}", l.action.name(), prefixes.join(",")),
                )
            })
            .collect()
    };
    let zones = |c: &Config| -> BTreeMap<String, String> {
        c.zones
            .iter()
            .map(|z| {
                let prefixes: Vec<String> = z.prefixes.iter().map(ToString::to_string).collect();
                (z.name.clone(), prefixes.join(","))
            })
            .collect()
    };
    let rules = |c: &Config| -> BTreeMap<String, String> {
        c.rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    format!(
                        "{:?} {:?} {:?} {:?} {:?} {}",
                        r.from,
                        r.to,
                        r.protocol,
                        r.ports,
                        r.icmp_types,
                        r.action.name()
                    ),
                )
            })
            .collect()
    };
    let mut out = serde_json::Map::new();
    for (what, digest) in [
        (
            "lists",
            &lists as &dyn Fn(&Config) -> BTreeMap<String, String>,
        ),
        ("zones", &zones),
        ("rules", &rules),
    ] {
        let a = old.map(digest).unwrap_or_default();
        let b = new.map(digest).unwrap_or_default();
        let added: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        let removed: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let changed: Vec<&String> = b
            .keys()
            .filter(|k| a.get(*k).is_some_and(|v| Some(v) != b.get(*k)))
            .collect();
        out.insert(format!("{what}_added"), json!(added));
        out.insert(format!("{what}_removed"), json!(removed));
        out.insert(format!("{what}_changed"), json!(changed));
    }
    let settings = |c: &Config| {
        json!({
            "mode": c.mode.name(),
            "segmentation": c.segmentation.enabled,
            "default": if c.segmentation.default_allow { "allow" } else { "deny" },
            "intra_zone": if c.segmentation.intra_zone_allow { "allow" } else { "deny" },
        })
    };
    if let Some(n) = new {
        let before = old.map(settings);
        let after = settings(n);
        if before.as_ref() != Some(&after) {
            out.insert("settings".into(), after);
        }
    }
    Value::Object(out)
}

/// A break in a chain: the 1-based line and what is wrong there.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    pub line: usize,
    pub problem: String,
}

/// Checks a whole chain; returns the number of records, or the first break.
pub fn verify(text: &str) -> Result<usize, Break> {
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    let mut expect_seq: Option<u64> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let brk = |problem: String| Break { line: n, problem };
        let Value::Object(mut r) =
            serde_json::from_str::<Value>(line).map_err(|e| brk(format!("not JSON: {e}")))?
        else {
            return Err(brk("not a JSON object".into()));
        };
        let Some(Value::String(hash)) = r.remove("hash") else {
            return Err(brk("no hash field".into()));
        };
        if r.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(brk("prev does not match the hash of the line before: a line was removed, reordered or inserted".into()));
        }
        if line_hash(&r) != hash {
            return Err(brk(
                "hash does not match the line's content: the line was edited".into(),
            ));
        }
        let seq = r
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| brk("no seq field".into()))?;
        if let Some(want) = expect_seq
            && seq != want
        {
            return Err(brk(format!("seq {seq} where {want} was expected")));
        }
        expect_seq = Some(seq + 1);
        prev = hash;
        count += 1;
    }
    Ok(count)
}

/// An audit log's text. It must be a regular file: `/dev/zero` or a FIFO
/// would never end. It has no size cap: it grows for the life of the node.
fn read_log(path: &Path) -> Result<String, ReadError> {
    let bytes = read_bounded(path, u64::MAX)?;
    String::from_utf8(bytes).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// `tierguard audit verify FILE`.
pub fn verify_file(path: &Path) -> std::process::ExitCode {
    let text = match read_log(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return std::process::ExitCode::from(2);
        }
    };
    match verify(&text) {
        Ok(n) => {
            println!("{}: {n} records, chain intact", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(b) => {
            println!("{}:{}: {}", path.display(), b.line, b.problem);
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_chain(path: &Path, n: usize) {
        let mut log = AuditLog::open(path).unwrap();
        for i in 0..n {
            let mut r = Map::new();
            r.insert("trigger".into(), json!(format!("reload {i}")));
            r.insert("result".into(), json!("applied"));
            log.append(r).unwrap();
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tg-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn an_audit_log_that_is_a_device_is_refused_not_read() {
        // `audit_log = "/dev/zero"` made the agent read without end at start.
        let e = AuditLog::open(Path::new("/dev/zero")).err().unwrap();
        assert_eq!(
            e,
            "cannot read audit log /dev/zero: it is a character device, not a regular file"
        );
        // A missing file starts a chain.
        let p = tmp("fresh");
        assert!(AuditLog::open(&p).is_ok());
    }

    #[test]
    fn intact_chains_verify_and_continue_across_opens() {
        let p = tmp("intact");
        write_chain(&p, 3);
        write_chain(&p, 2); // a restarted agent continues the chain
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(verify(&text), Ok(5));
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["seq"], 5);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn edits_removals_and_reorders_are_found_at_their_line() {
        let p = tmp("tamper");
        write_chain(&p, 4);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("reload 2", "reload 9", 1);
        let b = verify(&edited).unwrap_err();
        assert_eq!(b.line, 3);
        assert!(b.problem.contains("edited"), "{b:?}");

        let removed = [lines[0], lines[2], lines[3]].join("\n");
        let b = verify(&removed).unwrap_err();
        assert_eq!(b.line, 2);
        assert!(b.problem.contains("removed"), "{b:?}");

        let reordered = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        assert_eq!(verify(&reordered).unwrap_err().line, 2);

        assert_eq!(verify("not json\n").unwrap_err().line, 1);
        // Removing the last line cannot be seen from the file alone; the
        // next agent's line would then fail to chain only if it was written
        // before the removal. Truncation from the end is documented.
        assert_eq!(verify(&lines[..3].join("\n")), Ok(3));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn summary_names_lists_added_removed_and_changed() {
        use std::path::Path;
        let a = Config::load_str(
            "[[lists]]\nname = \"a\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n[[lists]]\nname = \"b\"\naction = \"deny\"\ncidrs = [\"10.1.0.0/16\"]\n",
            "a.toml",
            Path::new("."),
        )
        .unwrap();
        let b = Config::load_str(
            "[[lists]]\nname = \"a\"\naction = \"allow\"\ncidrs = [\"10.0.0.0/8\"]\n[[lists]]\nname = \"c\"\naction = \"deny\"\ncidrs = [\"10.2.0.0/16\"]\n",
            "b.toml",
            Path::new("."),
        )
        .unwrap();
        let s = summary(Some(&a), Some(&b));
        assert_eq!(s["lists_added"], json!(["c"]));
        assert_eq!(s["lists_removed"], json!(["b"]));
        assert_eq!(s["lists_changed"], json!(["a"]));
        assert_eq!(s["rules_added"], json!([]));
        assert!(s.get("settings").is_none(), "settings unchanged: {s}");
        assert_eq!(summary(None, Some(&a))["lists_added"], json!(["a", "b"]));
    }

    #[test]
    fn summary_names_zones_rules_and_settings_that_changed() {
        use std::path::Path;
        let zones = "[[zones]]\nname = \"edge\"\ncidrs = [\"10.10.0.0/16\"]\n[[zones]]\nname = \"dmz\"\ncidrs = [\"10.20.0.0/16\"]\n";
        let rule = |ports: &str, line_offset: &str| {
            format!(
                "{line_offset}[[rules]]\nname = \"web\"\nfrom = \"edge\"\nto = \"dmz\"\nprotocol = \"tcp\"\nports = [{ports}]\naction = \"allow\"\n"
            )
        };
        let load = |t: String| Config::load_str(&t, "p.toml", Path::new(".")).unwrap();
        let a = load(format!("{zones}{}", rule("443", "")));
        // The same rule further down the file: nothing changed.
        let moved = load(format!("{zones}{}", rule("443", "\n\n\n")));
        let s = summary(Some(&a), Some(&moved));
        assert_eq!(s["rules_changed"], json!([]));
        // Another port, and audit mode: named.
        let b = load(format!("mode = \"audit\"\n{zones}{}", rule("8443", "")));
        let s = summary(Some(&a), Some(&b));
        assert_eq!(s["rules_changed"], json!(["web"]));
        assert_eq!(s["zones_changed"], json!([]));
        assert_eq!(s["settings"]["mode"], json!("audit"));
    }
}
