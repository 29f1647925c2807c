//! `tierguard explain`: what would happen to a packet, and which part of the
//! policy decides. It builds the packet, then runs the same parser and the
//! same decision functions as the kernel (`tierguard_common`), against the
//! same compiled tables.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use ipnetwork::IpNetwork;
use serde::Serialize;
use tierguard_common::{
    build::{icmp, tcp, udp, v4_frame, v6_frame},
    decide::{self, Decision, NO_ID},
    packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN},
    parse::parse,
    reason::Reason,
};

use crate::check::load;
use crate::cli::{Direction, ExplainArgs, Proto};
use crate::config::{Config, ConfigErrors};
use crate::policy::{CompiledPolicy, host_addresses};

/// The answer, as printed (text or JSON).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: &'static str,
    /// Which stage decided: parse, list or default.
    pub stage: &'static str,
    pub reason: &'static str,
    /// The list that decided, if any.
    pub list: Option<String>,
    pub list_action: Option<&'static str>,
    /// The configured prefix of that list that matched (the longest).
    pub matched_prefix: Option<String>,
    /// Where that list is defined (file:line:column).
    pub defined_at: Option<String>,
    pub packet: String,
}

/// Validated packet description.
pub struct Query {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Query {
    pub fn from_args(a: &ExplainArgs) -> Result<Query, String> {
        if a.src.is_ipv4() != a.dst.is_ipv4() {
            return Err(format!(
                "--src {} and --dst {} are of different address families",
                a.src, a.dst
            ));
        }
        let v4 = a.src.is_ipv4();
        let proto = match a.proto {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
            Proto::Icmp if v4 => PROTO_ICMP,
            Proto::Icmpv6 if !v4 => PROTO_ICMPV6,
            Proto::Icmp => {
                return Err("--proto icmp needs IPv4 addresses (use icmpv6 for IPv6)".into());
            }
            Proto::Icmpv6 => {
                return Err("--proto icmpv6 needs IPv6 addresses (use icmp for IPv4)".into());
            }
        };
        let ports = matches!(a.proto, Proto::Tcp | Proto::Udp);
        if !ports && (a.dport.is_some() || a.sport.is_some()) {
            return Err("--dport and --sport apply to tcp and udp only".into());
        }
        if a.direction == Direction::Egress {
            return Err(
                "egress is not enforced yet: only --direction ingress can be explained".into(),
            );
        }
        Ok(Query {
            src: a.src,
            dst: a.dst,
            proto,
            sport: a.sport.unwrap_or(40000),
            dport: a.dport.unwrap_or(0),
        })
    }

    /// The frame the kernel would see (a TCP SYN, a UDP datagram, an echo request).
    fn frame(&self) -> Vec<u8> {
        let l4 = match self.proto {
            PROTO_TCP => tcp(self.sport, self.dport, TCP_SYN, 0),
            PROTO_UDP => udp(self.sport, self.dport, 0),
            PROTO_ICMP => icmp(8, 0),
            _ => icmp(128, 0),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => v4_frame(s.octets(), d.octets(), self.proto, &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => v6_frame(s.octets(), d.octets(), self.proto, &l4),
            _ => unreachable!("families checked in from_args"),
        }
    }

    fn describe(&self) -> String {
        let name = match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMP => "icmp echo-request",
            _ => "icmpv6 echo-request",
        };
        if matches!(self.proto, PROTO_TCP | PROTO_UDP) {
            format!(
                "{name} {} port {} -> {} port {}",
                self.src, self.sport, self.dst, self.dport
            )
        } else {
            format!("{name} {} -> {}", self.src, self.dst)
        }
    }
}

/// Explains `q` against a loaded config and its compiled policy.
pub fn explain(config: &Config, policy: &CompiledPolicy, q: &Query) -> Explanation {
    let frame = q.frame();
    let decision = match parse(&frame[..]) {
        Err(reason) => Decision::new(reason),
        Ok(p) if p.family == 0 => Decision::new(Reason::NonIp),
        // The same lookup the kernel does on the parsed source address.
        Ok(_) => decide::ingress(policy.lookup_source(q.src)),
    };
    let stage = match decision.reason {
        Reason::AllowList | Reason::DenyList => "list",
        Reason::NoMatch => "default",
        _ => "parse",
    };
    let (mut list, mut list_action, mut matched_prefix, mut defined_at) = (None, None, None, None);
    if decision.id != NO_ID
        && let Some(l) = config.lists.get(decision.id as usize)
    {
        list = Some(l.name.clone());
        list_action = Some(l.action.name());
        defined_at = Some(l.origin.to_string());
        matched_prefix = l
            .prefixes
            .iter()
            .filter(|n: &&IpNetwork| n.contains(q.src))
            .max_by_key(|n| n.prefix())
            .map(ToString::to_string);
    }
    Explanation {
        verdict: decision.reason.verdict().name(),
        stage,
        reason: decision.reason.name(),
        list,
        list_action,
        matched_prefix,
        defined_at,
        packet: q.describe(),
    }
}

pub fn render_text(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "packet:  {}", e.packet);
    let _ = writeln!(s, "verdict: {}", e.verdict);
    let _ = writeln!(s, "stage:   {}", e.stage);
    let _ = writeln!(s, "reason:  {}", e.reason);
    if let (Some(list), Some(action)) = (&e.list, e.list_action) {
        let prefix = e.matched_prefix.as_deref().unwrap_or("?");
        let at = e.defined_at.as_deref().unwrap_or("?");
        let _ = writeln!(
            s,
            "list:    {list} ({action}), matched {prefix}, defined at {at}"
        );
    } else if e.stage == "default" {
        let _ = writeln!(
            s,
            "list:    none matched the source; nothing else decides, so the packet passes"
        );
    }
    s
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    let query = match Query::from_args(args) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = load(&args.config)
        .and_then(|c| CompiledPolicy::compile(&c, &host_addresses()).map(|p| (c, p)));
    let (config, policy) = match loaded {
        Ok(x) => x,
        Err(ConfigErrors(errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); policy refused", errors.len());
            return ExitCode::from(2);
        }
    };
    let e = explain(&config, &policy, &query);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).expect("explanation serialises")
        );
    } else {
        print!("{}", render_text(&e));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn setup() -> (Config, CompiledPolicy) {
        let c = Config::load_str(
            "[[lists]]\nname = \"bogons\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\
             [[lists]]\nname = \"partner\"\naction = \"allow\"\ncidrs = [\"203.0.113.128/25\"]\n",
            "p.toml",
            Path::new("."),
        )
        .unwrap();
        let p = CompiledPolicy::compile(&c, &[]).unwrap();
        (c, p)
    }

    fn q(src: &str, dst: &str, proto: u8) -> Query {
        Query {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport: 40000,
            dport: 443,
        }
    }

    #[test]
    fn names_the_list_the_prefix_and_where_it_is_defined() {
        let (c, p) = setup();
        let e = explain(&c, &p, &q("203.0.113.7", "10.0.0.1", PROTO_TCP));
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("drop", "list", "deny_list")
        );
        assert_eq!(e.list.as_deref(), Some("bogons"));
        assert_eq!(e.matched_prefix.as_deref(), Some("203.0.113.0/24"));
        assert_eq!(e.defined_at.as_deref(), Some("p.toml:2:8"));
        let e = explain(&c, &p, &q("203.0.113.200", "10.0.0.1", PROTO_UDP));
        assert_eq!((e.verdict, e.reason), ("pass", "allow_list"));
        assert_eq!(e.matched_prefix.as_deref(), Some("203.0.113.128/25"));
        let e = explain(&c, &p, &q("2001:db8::1", "fd00::1", PROTO_ICMPV6));
        assert_eq!((e.verdict, e.list.as_deref()), ("drop", Some("bogons")));
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_ICMP));
        assert_eq!(
            (e.verdict, e.stage, e.reason, e.list.clone()),
            ("pass", "default", "no_match", None)
        );
        assert!(render_text(&e).contains("none matched the source"));
    }
}
