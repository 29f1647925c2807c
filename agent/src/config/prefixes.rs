//! Addresses and CIDRs as operators write them: inline, or one per line in a
//! file (plain lists with `#` comments, Spamhaus DROP/EDROP with `; SBL…`).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// Parses `1.2.3.0/24`, `2001:db8::/32`, or a host address (`/32` or `/128`).
/// Host bits set under the mask are refused: the policy must say exactly what
/// it enforces.
pub fn parse_prefix(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty address".into());
    }
    // The longest address or CIDR, ffff:...:255.255.255.255/128, is 49
    // characters: a longer value is not one, and is not quoted whole.
    if s.chars().count() > 64 {
        return Err(format!(
            "'{}' is too long to be an IP address or CIDR",
            super::error::clip(s)
        ));
    }
    let net = if s.contains('/') {
        let (addr, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not a CIDR: '{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{s}' is not a CIDR: prefix length must be 0 to {max}"))?;
        IpNetwork::new(addr, len).map_err(|e| format!("'{s}' is not a CIDR: {e}"))?
    } else {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        IpNetwork::from(addr)
    };
    if net.network() != net.ip() {
        return Err(format!(
            "'{s}' has host bits set under its /{} mask (did you mean {}/{}?)",
            net.prefix(),
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

/// One bad line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a list file's text. Comments start with `#` or `;` (Spamhaus puts
/// the SBL reference after `;`); blank lines are skipped.
pub fn parse_list_text(text: &str) -> (Vec<IpNetwork>, Vec<LineError>) {
    let (entries, errors) = parse_list_entries(text);
    (entries.into_iter().map(|e| e.net).collect(), errors)
}

/// One prefix of a list file and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLine {
    pub net: IpNetwork,
    pub line: usize,
    pub column: usize,
}

/// [`parse_list_text`], keeping each prefix's line and column.
pub fn parse_list_entries(text: &str) -> (Vec<ListLine>, Vec<LineError>) {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split(['#', ';']).next().unwrap_or("");
        let token = content.trim();
        if token.is_empty() {
            continue;
        }
        let column = content.len() - content.trim_start().len() + 1;
        if token.split_whitespace().count() > 1 {
            errors.push(LineError {
                line: i + 1,
                column,
                message: format!(
                    "expected one address or CIDR per line, found '{}'",
                    super::error::clip(token)
                ),
            });
            continue;
        }
        match parse_prefix(token) {
            Ok(net) => nets.push(ListLine {
                net,
                line: i + 1,
                column,
            }),
            Err(message) => errors.push(LineError {
                line: i + 1,
                column,
                message,
            }),
        }
    }
    (nets, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_become_full_length_prefixes() {
        assert_eq!(
            parse_prefix("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            parse_prefix("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_prefix(" 10.0.0.0/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap().prefix(), 0);
        assert_eq!(parse_prefix("::/0").unwrap().prefix(), 0);
    }

    #[test]
    fn bad_prefixes_are_explained() {
        assert!(parse_prefix("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(
            parse_prefix("2001:db8::/129")
                .unwrap_err()
                .contains("0 to 128")
        );
        assert!(
            parse_prefix("10.0.0.256")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            parse_prefix("10.0.0.0/x")
                .unwrap_err()
                .contains("prefix length")
        );
        assert!(
            parse_prefix("10.1.2.3/24")
                .unwrap_err()
                .contains("did you mean 10.1.2.0/24")
        );
        assert!(parse_prefix("").unwrap_err().contains("empty"));
        assert_eq!(
            parse_prefix(&"1".repeat(5_000_000)).unwrap_err(),
            format!(
                "'{}... (5000000 characters)' is too long to be an IP address or CIDR",
                "1".repeat(48)
            )
        );
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128";
        assert_eq!(parse_prefix(longest).unwrap().prefix(), 128);
        assert!(
            parse_prefix("banana")
                .unwrap_err()
                .contains("not an IP address")
        );
    }

    #[test]
    fn spamhaus_and_plain_formats() {
        let text = "; Spamhaus DROP List 2026/11/23\n\
                    ; Last-Modified: Mon, 23 Nov 2026\n\
                    1.10.16.0/20 ; SBL256894\n\
                    2.56.192.0/22 ; SBL459831\n\
                    \n\
                    # plain list\n\
                    192.0.2.7\n\
                    2001:db8::/32   # docs\n";
        let (nets, errs) = parse_list_text(text);
        assert!(errs.is_empty(), "{errs:?}");
        let got: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "1.10.16.0/20",
                "2.56.192.0/22",
                "192.0.2.7/32",
                "2001:db8::/32"
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_line_and_column() {
        let (nets, errs) = parse_list_text("10.0.0.0/8\n  300.1.1.1\n1.2.3.0/24 extra\n");
        assert_eq!(nets.len(), 1);
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].column), (2, 3));
        assert!(errs[0].message.contains("300.1.1.1"));
        assert_eq!(errs[1].line, 3);
        assert!(errs[1].message.contains("one address or CIDR per line"));
    }
}
