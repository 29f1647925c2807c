//! Reading the files a policy names (the config itself, list and zone files,
//! the webhook token) without trusting what the path points at: a FIFO, a
//! device or a directory is refused before it is opened (reading
//! `/dev/zero` never ends, opening a FIFO blocks until a writer comes, and
//! the reload watcher must never stall on either), and a regular file is
//! read up to a cap.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest config file read. A policy is a few kilobytes; 64 MiB leaves room
/// for a generated one with a million inline prefixes (about 20 MB), while
/// the TOML parser's memory for it stays bounded.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Largest list or zone file read. A million prefixes, about what the
/// tables hold, take about 20 MB plain and about 35 MB with Spamhaus-style
/// `; SBLnnnn` comments; 256 MiB is several times that, and still a size
/// the agent can hold in memory twice (a reload reads the new files while
/// the live policy is kept).
pub const MAX_LIST_FILE_BYTES: u64 = 256 << 20;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// Not a regular file: what it is ("a FIFO", "a directory"...).
    NotRegular(&'static str),
    /// Larger than the cap (`size` is at least `max + 1`).
    TooLarge {
        size: u64,
        max: u64,
    },
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotRegular(what) => write!(f, "it is {what}, not a regular file"),
            ReadError::TooLarge { size, max } => write!(
                f,
                "it is {size} bytes, more than the {max} bytes ({} MiB) accepted",
                max >> 20
            ),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// What a non-regular file is, for messages.
fn kind(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Reads a regular file (symbolic links followed) of at most `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    // Look before opening: opening a FIFO blocks, opening a device can have
    // effects of its own.
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if let Some(what) = kind(meta.file_type()) {
        return Err(ReadError::NotRegular(what));
    }
    // The path may have been swapped since: O_NONBLOCK keeps the open of a
    // FIFO from blocking, and the opened file is checked again.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if let Some(what) = kind(meta.file_type()) {
        return Err(ReadError::NotRegular(what));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    // The file may grow while it is read: read one byte past the cap at most.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Text that is not UTF-8: the line and column (in characters, from 1) of
/// the first bad byte, and the byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUtf8 {
    pub line: usize,
    pub column: usize,
    pub byte: u8,
}

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not valid UTF-8 (byte 0x{:02x})", self.byte)
    }
}

/// The bytes as text, without a leading UTF-8 byte order mark (which some
/// Windows editors write, and which would otherwise be part of the first
/// line's value or key).
pub fn decode_text(mut bytes: Vec<u8>) -> Result<String, NotUtf8> {
    // Dropped before decoding, so that places in the first line count from
    // what the reader sees (and in place: a list file can be 256 MiB).
    if bytes.starts_with("\u{feff}".as_bytes()) {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let valid = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let (line, column) = super::line_col(valid, valid.len());
        NotUtf8 {
            line,
            column,
            byte: bytes[good],
        }
    })
}

/// Makes a FIFO at `path` (mode 0600), for the tests that check one is
/// refused without blocking.
#[cfg(test)]
pub fn mkfifo(path: &Path) {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_before_reading() {
        for (path, what) in [
            ("/dev/zero", "a character device"),
            ("/dev/null", "a character device"),
            ("/", "a directory"),
        ] {
            let e = read_bounded(Path::new(path), MAX_LIST_FILE_BYTES).unwrap_err();
            assert_eq!(e.to_string(), format!("it is {what}, not a regular file"));
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("tg-files-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        let e = read_bounded(&fifo, MAX_LIST_FILE_BYTES).unwrap_err();
        assert_eq!(e.to_string(), "it is a FIFO, not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_over_the_cap_are_refused() {
        let dir = std::env::temp_dir().join(format!("tg-files-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big");
        std::fs::write(&f, vec![b'#'; 2 << 20]).unwrap();
        let e = read_bounded(&f, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is 2097152 bytes, more than the 1048576 bytes (1 MiB) accepted"
        );
        assert_eq!(read_bounded(&f, 2 << 20).unwrap().len(), 2 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_utf8_is_placed_and_a_bom_dropped() {
        assert_eq!(
            decode_text(b"a\nb\xc3\xa9c\xff".to_vec()).unwrap_err(),
            NotUtf8 {
                line: 2,
                column: 4,
                byte: 0xff
            }
        );
        assert_eq!(
            decode_text(b"\xef\xbb\xbf10.0.0.0/8\n".to_vec()).unwrap(),
            "10.0.0.0/8\n"
        );
        assert_eq!(decode_text(b"\xef\xbb\xbf".to_vec()).unwrap(), "");
        // Places in the first line count from after the mark.
        assert_eq!(
            decode_text(b"\xef\xbb\xbfab\xff".to_vec()).unwrap_err(),
            NotUtf8 {
                line: 1,
                column: 3,
                byte: 0xff
            }
        );
    }
}
