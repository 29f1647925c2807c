//! What travels over the admin socket: one JSON request per line from the
//! client, one JSON response per line back.

use serde::{Deserialize, Serialize};

/// Longest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Block an address or prefix for a while.
    Block {
        target: String,
        /// `"10m"`, `"2h"`, `"90"` (seconds): 1 s to 30 days.
        #[serde(rename = "for")]
        duration: String,
        reason: String,
    },
    /// Remove the block of exactly this address or prefix.
    Unblock { target: String },
    /// List what is blocked.
    Blocks {},
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Block { .. } => "block",
            Request::Unblock { .. } => "unblock",
            Request::Blocks {} => "blocks",
        }
    }
}

/// One block in force, as `tierguard blocks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The blocked prefix (`/32` or `/128` for one address).
    pub target: String,
    /// `admin` or `limit`.
    pub origin: String,
    /// The limit that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Why, for an admin block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who, for an admin block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// RFC 3339.
    pub started: String,
    pub until: String,
    pub remaining_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done (when `ok` is true), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `blocks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockInfo>>,
}

impl Response {
    pub fn error(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Response::default()
        }
    }

    pub fn done(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Response::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_an_op() {
        let r: Request = serde_json::from_str(
            r#"{"op":"block","target":"192.0.2.7","for":"10m","reason":"scan"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Block {
                target: "192.0.2.7".into(),
                duration: "10m".into(),
                reason: "scan".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Blocks {}).unwrap(),
            r#"{"op":"blocks"}"#
        );
        for bad in [
            r#"{"op":"reboot"}"#,
            r#"{"op":"unblock"}"#,
            r#"{"op":"blocks","x":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
