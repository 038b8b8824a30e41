//! A small tmpfs mounted by a test (which needs root, as CI runs it): a disk that fills
//! or turns read-only for real (disk_full_e2e, snapshot_e2e).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size_mb: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"]).arg(at).output().expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs as the data dir and needs root (or CAP_SYS_ADMIN), as CI runs it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Make the mount read-only under a running berth, as the kernel does after a disk
    /// error (`errors=remount-ro`): a plain `remount,ro` is refused while files are open
    /// for writing, so a read-only bind of the mount goes on top of it.
    pub fn read_only(&self) {
        for args in [vec!["--bind"], vec!["-o", "remount,bind,ro"]] {
            let out = Command::new("mount").args(&args).arg(&self.0).arg(&self.0).output().unwrap();
            assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Take the read-only bind away: the writable mount shows again.
    pub fn writable(&self) {
        let out = Command::new("umount").arg(&self.0).output().unwrap();
        assert!(out.status.success(), "umount the read-only bind: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The read-only bind too, if a failed assertion left it on top.
        while Command::new("umount").arg("-l").arg(&self.0).status().is_ok_and(|s| s.success()) {}
    }
}

/// Fill the filesystem of `dir` to the last byte with `dir/filler`.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

