//! Run external commands: print them, run them, and fail with context.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// A command that prints itself (`  $ prog args`) before it runs.
pub struct Cmd {
    inner: Command,
    shown: String,
    quiet: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Self {
            inner: Command::new(program),
            shown: quote(program),
            quiet: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.shown.push(' ');
        self.shown.push_str(&quote(arg.as_ref()));
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Set an environment variable for the child; it is shown before the command.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.shown = format!("{key}={} {}", quote(value), self.shown);
        self.inner.env(key, value);
        self
    }

    /// Like [`Cmd::env`], but printed as `key=shown` (e.g. `PATH=/usr/lib/llvm-22/bin:$PATH`).
    pub fn env_shown_as(mut self, key: &str, value: impl AsRef<OsStr>, shown: &str) -> Self {
        self.shown = format!("{key}={shown} {}", self.shown);
        self.inner.env(key, value);
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Do not print the command line (for probes whose result is reported instead).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The command line as printed.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn announce(&self) {
        if !self.quiet {
            println!("  $ {}", self.shown);
        }
    }

    /// Run with inherited stdio; fail unless it exits 0.
    pub fn run(self) -> Result<()> {
        let shown = self.shown.clone();
        let status = self.status()?;
        if !status.success() {
            bail!("`{shown}` failed ({})", describe(status));
        }
        Ok(())
    }

    /// Run with inherited stdio and return how it exited (failing only if it cannot start).
    pub fn status(mut self) -> Result<ExitStatus> {
        self.announce();
        self.inner
            .status()
            .with_context(|| format!("could not start `{}`", self.shown))
    }

    /// Run with stdin closed and output captured; returns however it exited.
    pub fn output(mut self) -> Result<Output> {
        self.announce();
        self.inner
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{}`", self.shown))
    }

    /// Like [`Cmd::output`], feeding `input` on stdin.
    pub fn output_with_input(mut self, input: &[u8]) -> Result<Output> {
        use std::io::Write as _;
        self.announce();
        let mut child = self
            .inner
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{}`", self.shown))?;
        if let Some(mut stdin) = child.stdin.take() {
            // The child may exit without reading; a broken pipe here is not an error.
            let _ = stdin.write_all(input);
        }
        child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", self.shown))
    }

    /// Capture stdout; fail (with the child's stderr) unless it exits 0.
    pub fn stdout(self) -> Result<String> {
        let shown = self.shown.clone();
        let out = self.output()?;
        if !out.status.success() {
            bail!(
                "`{shown}` failed ({}): {}",
                describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// True if the command starts and exits 0 (output discarded, nothing printed).
    pub fn succeeds(mut self) -> bool {
        self.inner
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// "exit code 1" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prepend `dir` to a PATH-style list unless it is already on it.
pub fn path_with(dir: &Path, path: Option<OsString>) -> Option<OsString> {
    let current: Vec<_> = path
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    if current.iter().any(|p| p == dir) {
        return None;
    }
    let mut all = vec![dir.to_path_buf()];
    all.extend(current);
    std::env::join_paths(all).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote(OsStr::new("ip")), "ip");
        assert_eq!(quote(OsStr::new("${Status}")), "'${Status}'");
        assert_eq!(quote(OsStr::new("a b")), "'a b'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
    }

    #[test]
    fn shown_line() {
        let c = Cmd::new("cargo").arg("install").env("A", "/x y");
        assert_eq!(c.shown(), "A='/x y' cargo install");
    }

    #[test]
    fn path_prepend() {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            path_with(dir, Some("/root/.cargo/bin:/usr/bin".into())),
            None
        );
        assert_eq!(
            path_with(dir, Some("/usr/bin".into())),
            Some(OsString::from("/root/.cargo/bin:/usr/bin"))
        );
        assert_eq!(
            path_with(dir, None),
            Some(OsString::from("/root/.cargo/bin"))
        );
    }
}
