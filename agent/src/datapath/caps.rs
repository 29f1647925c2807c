//! Checking the capabilities the datapath needs before touching anything, so
//! a missing one is named instead of surfacing as a bare EPERM.

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Names of the capabilities missing from the effective set, given the
/// `CapEff:` hex mask of /proc/self/status. CAP_SYS_ADMIN covers CAP_BPF and
/// CAP_PERFMON (kernels before 5.8 know only it).
pub fn missing_from(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Capabilities this process lacks (empty when it has them all, or when the
/// effective set cannot be read, in which case the kernel will say no itself).
pub fn missing() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .map(missing_from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        let full = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert!(missing_from(full).is_empty());
        assert!(missing_from((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(
            missing_from(1 << CAP_BPF | 1 << CAP_PERFMON),
            ["CAP_NET_ADMIN"]
        );
        assert!(missing_from(u64::MAX).is_empty());
    }

    #[test]
    fn verifier_refusals_read_as_sentences() {
        let e = super::super::DatapathError::Verifier {
            program: "tierguard_ingress".into(),
            log: "R1 invalid mem access".into(),
        };
        assert_eq!(
            e.to_string(),
            "the kernel refused program tierguard_ingress; verifier log follows:\nR1 invalid mem access"
        );
    }
}
