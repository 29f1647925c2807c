//! Config errors that point at the place to fix: file, line, column.

use std::fmt;

/// One problem in a config or list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Config path, list-file path, `<embedded default>` or `command line`.
    pub file: String,
    /// 1-based; 0 when the problem has no single place (then only `file` is shown).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, message) = (one_line(&self.file), one_line(&self.message));
        if self.line == 0 {
            write!(f, "{file}: {message}")
        } else {
            write!(f, "{file}:{}:{}: {message}", self.line, self.column)
        }
    }
}

/// `s` with control characters and invisible format characters escaped
/// (`\n`, `\u{0}`, `\u{feff}`...): messages quote names and list lines as
/// written, and each error must stay one line that prints nothing a
/// terminal would interpret.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !s.contains(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Longest value quoted whole in a message; longer ones are cut (a list
/// file line can be megabytes long).
const MAX_QUOTED: usize = 64;

/// `s` for quoting in a message: whole if short, else its start and its length.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    let n = s.chars().count();
    if n <= MAX_QUOTED {
        return s.into();
    }
    let start: String = s.chars().take(MAX_QUOTED - 16).collect();
    format!("{start}... ({n} characters)").into()
}

/// Every problem found; a config is refused if there is at least one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A source text and its name, to turn byte offsets into line and column.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    /// Byte offset where each line starts, and whether the line is ASCII:
    /// every item of a policy is placed, and counting lines from the start
    /// of the text each time was quadratic (65,535 rules took minutes).
    lines: Vec<(usize, bool)>,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Source<'a> {
        let mut lines = Vec::new();
        let mut start = 0;
        for line in text.split_inclusive('\n') {
            lines.push((start, line.is_ascii()));
            start += line.len();
        }
        if text.is_empty() || text.ends_with('\n') {
            lines.push((text.len(), true));
        }
        Source { name, text, lines }
    }

    /// 1-based line and column (in characters) of a byte offset, as [`line_col`].
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let i = self.lines.partition_point(|&(start, _)| start <= offset);
        let Some(&(start, ascii)) = i.checked_sub(1).and_then(|i| self.lines.get(i)) else {
            return (1, 1);
        };
        let column = if ascii {
            offset - start
        } else {
            let end = floor_char_boundary(self.text, offset);
            self.text[start..end].chars().count()
        };
        (i, column + 1)
    }

    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(offset);
        ConfigError {
            file: self.name.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    pub fn error_span(
        &self,
        span: &std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error_at(span.start, message)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_line_and_column() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 9), (2, 4));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn the_line_index_agrees_with_line_col() {
        let texts = ["", "a = 1\nbb = 2\n", "x\n\né = \"ü\"\r\nlast", "\n\n"];
        for t in texts {
            let src = Source::new("p.toml", t);
            for offset in 0..=t.len() + 2 {
                assert_eq!(
                    src.line_col(offset),
                    line_col(t, offset),
                    "{t:?} at {offset}"
                );
            }
        }
    }

    #[test]
    fn display_names_the_place() {
        let e = ConfigError {
            file: "p.toml".into(),
            line: 3,
            column: 7,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml:3:7: bad");
        let e = ConfigError {
            file: "p.toml".into(),
            line: 0,
            column: 0,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml: bad");
    }

    #[test]
    fn control_characters_are_escaped_so_an_error_stays_one_line() {
        let e = ConfigError {
            file: "lists/x\n.txt".into(),
            line: 2,
            column: 1,
            message: "'1.2.3.4\0' is not an IP address or CIDR; name 'a\nb\u{1b}[31m\u{202e}'"
                .into(),
        };
        assert_eq!(
            e.to_string(),
            "lists/x\\n.txt:2:1: '1.2.3.4\\u{0}' is not an IP address or CIDR; name 'a\\nb\\u{1b}[31m\\u{202e}'"
        );
        assert_eq!(one_line("plain é ü"), "plain é ü");
    }

    #[test]
    fn long_values_are_clipped() {
        assert_eq!(clip(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(
            clip(&"1".repeat(5_000_000)),
            format!("{}... (5000000 characters)", "1".repeat(48))
        );
    }
}
