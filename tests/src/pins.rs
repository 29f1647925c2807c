//! A private bpffs directory per test, removed on drop.

use std::path::{Path, PathBuf};

pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(name: &str) -> PinDir {
        crate::require_root();
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/tierguard-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        PinDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Pins are files in bpffs; removing them releases the kernel objects.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
