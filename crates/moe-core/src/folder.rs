//! Checkpoint folders on disk, whole or not at all. A save writes every file into a temporary
//! sibling folder (`.<name>.tmp-<pid>-<n>`), flushes each file, records its size and sha256 in a
//! manifest (`moe_checkpoint.json`, written last), flushes the folder, and switches it in with one
//! atomic rename: to a new name, or over an existing folder by an atomic exchange (Linux
//! `renameat2(RENAME_EXCHANGE)`), after which the previous folder, now under the temporary name, is
//! removed. Until that rename the previous checkpoint is untouched; on any failure the temporary
//! folder is removed; temporary folders left by killed processes are removed by the next save beside
//! them. Reading checks each file against the manifest (`CHECKPOINT_CORRUPT` naming the file).

use crate::error::{MoeError, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The manifest of a checkpoint folder: what was written, with a checksum per file.
pub const MANIFEST_FILE: &str = "moe_checkpoint.json";
const FORMAT: &str = "moe-trainer checkpoint";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Unique per save: two folders with the same id hold the same save.
    pub id: String,
    pub files: BTreeMap<String, FileSum>,
}

fn io(path: &Path, e: std::io::Error) -> MoeError {
    match e.kind() {
        std::io::ErrorKind::StorageFull => MoeError::Io(format!("{}: the disk is full ({e})", path.display())),
        _ => MoeError::Io(format!("{}: {e}", path.display())),
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MoeError {
    MoeError::CheckpointCorrupt(format!("{}: {what}", path.display()))
}

fn missing_or_io(path: &Path, e: std::io::Error) -> MoeError {
    match e.kind() {
        std::io::ErrorKind::NotFound => MoeError::CheckpointMissing(format!("{}: missing", path.display())),
        _ => io(path, e),
    }
}

fn check_sum(path: &Path, bytes: u64, sha256: &str, sum: &FileSum) -> Result<()> {
    if bytes != sum.bytes {
        return Err(corrupt(path, format!("{bytes} bytes, the manifest says {}", sum.bytes)));
    }
    if sha256 != sum.sha256 {
        return Err(corrupt(path, "its sha256 differs from the manifest's: the file is damaged"));
    }
    Ok(())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A name that is one plain file name inside a checkpoint folder.
fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name != MANIFEST_FILE && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if !ok {
        return Err(MoeError::InvalidArgument(format!("\"{name}\" is not a file name a checkpoint can hold")));
    }
    Ok(())
}

/// The parent folder and the folder name of `dir`; refuses paths that name no folder ("", ".", "/").
fn split(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir.file_name().and_then(|n| n.to_str()).filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(MoeError::InvalidArgument(format!("dir \"{}\" does not name a folder", dir.display())));
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

/// Writes one checkpoint folder. Files go into a temporary sibling; `commit` switches it in.
/// Dropped without `commit` (an error, a panic), it removes the temporary folder.
pub struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    files: BTreeMap<String, FileSum>,
    committed: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Writer {
    pub fn begin(dir: &Path) -> Result<Writer> {
        let (parent, name) = split(dir)?;
        std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        remove_stale(&parent);
        let tmp = parent.join(format!(".{name}.tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        Ok(Writer { dir: dir.to_path_buf(), tmp, files: BTreeMap::new(), committed: false })
    }

    /// Writes and flushes one file of the checkpoint.
    pub fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        check_file_name(name)?;
        // Test hook between the files of a save: `return(abort)` ends the process here (as a kill
        // would), `return` fails the save as a full disk would.
        fail::fail_point!("checkpoint.file", |arg: Option<String>| {
            if arg.as_deref() == Some("abort") {
                std::process::abort();
            }
            Err(MoeError::Io(format!("{}: injected write failure", self.tmp.join(name).display())))
        });
        let path = self.tmp.join(name);
        let mut f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io(&path, e))?;
        self.files.insert(name.to_string(), FileSum { bytes: bytes.len() as u64, sha256: sha256(bytes) });
        Ok(())
    }

    /// Writes the manifest, flushes the folder and switches it in at `dir` with one atomic rename.
    pub fn commit(mut self, id: &str) -> Result<()> {
        let manifest = Manifest { format: FORMAT.into(), version: 1, id: id.into(), files: self.files.clone() };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| MoeError::Internal(e.to_string()))?;
        {
            use std::io::Write;
            let path = self.tmp.join(MANIFEST_FILE);
            let mut f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
            f.write_all(&json).and_then(|_| f.sync_all()).map_err(|e| io(&path, e))?;
        }
        sync_dir(&self.tmp)?;
        fail::fail_point!("checkpoint.commit", |arg: Option<String>| {
            if arg.as_deref() == Some("abort") {
                std::process::abort();
            }
            Err(MoeError::Io(format!("{}: injected failure before the switch", self.dir.display())))
        });
        switch_in(&self.tmp, &self.dir)?;
        self.committed = true;
        // The previous folder, if any, now sits at the temporary name.
        let _ = std::fs::remove_dir_all(&self.tmp);
        if let Some(parent) = self.dir.parent() {
            let _ = sync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent });
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Atomically exchanges two existing paths; Ok(false) where the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| MoeError::InvalidArgument(format!("{}: a path with a NUL byte", p.display())));
    let (ca, cb) = (c(a)?, c(b)?);
    const RENAME_EXCHANGE: libc::c_uint = 2;
    // SAFETY: two valid NUL-terminated paths; renameat2 reads them and returns a status.
    let r = unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), RENAME_EXCHANGE) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(io(b, e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

/// Puts the finished folder `tmp` at `dir`. A new name: one rename. An existing folder: one atomic
/// exchange where the system has it (the old folder ends up at `tmp`), else two renames with the
/// old folder parked beside until the new one is in.
fn switch_in(tmp: &Path, dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return std::fs::rename(tmp, dir).map_err(|e| io(dir, e)),
        Err(e) => return Err(io(dir, e)),
        Ok(m) if !m.is_dir() => return Err(MoeError::Io(format!("{}: exists and is not a folder", dir.display()))),
        Ok(_) => {}
    }
    if exchange(tmp, dir)? {
        return Ok(());
    }
    let (parent, name) = split(dir)?;
    let old = parent.join(format!(".{name}.old-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(io(dir, e));
    }
    // `tmp` is gone; the caller removes it, so park the old folder there.
    std::fs::rename(&old, tmp).map_err(|e| io(tmp, e))
}

/// Whether process `pid` is alive (unknown = alive, so nothing of a live save is removed).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes the temporary folders (`.<name>.tmp-<pid>-<n>`, `.<name>.old-<pid>-<n>`) that processes
/// no longer alive left in `parent`.
pub fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_pid(&name) {
            if pid != std::process::id() && !alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The pid in a temporary folder's name, if `name` is one.
pub fn stale_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let rest = name.rsplit_once(".tmp-").or_else(|| name.rsplit_once(".old-"))?.1;
    let (pid, seq) = rest.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// A checkpoint folder opened for reading: its manifest (None for folders written by other tools
/// or by versions before manifests), against which every read file is checked.
pub struct Folder {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
}

impl Folder {
    pub fn open(dir: &Path) -> Result<Folder> {
        let path = dir.join(MANIFEST_FILE);
        let manifest = match std::fs::read(&path) {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e))?;
                if m.format != FORMAT || m.version != 1 {
                    return Err(corrupt(&path, format!("unknown format {:?} version {}", m.format, m.version)));
                }
                Some(m)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !dir.is_dir() {
                    return Err(MoeError::CheckpointMissing(format!("{}: no such checkpoint folder", dir.display())));
                }
                None
            }
            Err(e) => return Err(io(&path, e)),
        };
        Ok(Folder { dir: dir.to_path_buf(), manifest })
    }

    /// The save this folder holds, when it has a manifest.
    pub fn id(&self) -> Option<&str> {
        self.manifest.as_ref().map(|m| m.id.as_str())
    }

    /// Whether the checkpoint has file `name` (listed in the manifest, or present without one).
    pub fn has(&self, name: &str) -> bool {
        match &self.manifest {
            Some(m) => m.files.contains_key(name),
            None => self.dir.join(name).exists(),
        }
    }

    /// The bytes of file `name`, checked against the manifest's size and sha256.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| missing_or_io(&path, e))?;
        if let Some(sum) = self.manifest.as_ref().and_then(|m| m.files.get(name)) {
            check_sum(&path, bytes.len() as u64, &sha256(&bytes), sum)?;
        }
        Ok(bytes)
    }

    /// Checks every file the manifest lists (size and sha256), reading each in pieces: a check
    /// of a large checkpoint holds no copy of it.
    pub fn verify(&self) -> Result<()> {
        for (name, sum) in self.manifest.iter().flat_map(|m| m.files.iter()) {
            let path = self.dir.join(name);
            let mut file = std::fs::File::open(&path).map_err(|e| missing_or_io(&path, e))?;
            let mut hasher = Sha256::new();
            let bytes = std::io::copy(&mut file, &mut hasher).map_err(|e| io(&path, e))?;
            check_sum(&path, bytes, &hex(&hasher.finalize()), sum)?;
        }
        Ok(())
    }

    /// True when the folder now holds another save than the one opened (it was replaced meanwhile).
    pub fn replaced(&self) -> bool {
        match Folder::open(&self.dir) {
            Ok(now) => now.id() != self.id(),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moe-folder-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn save(dir: &Path, id: &str, files: &[(&str, &[u8])]) -> Result<()> {
        let mut w = Writer::begin(dir)?;
        for (n, b) in files {
            w.file(n, b)?;
        }
        w.commit(id)
    }

    #[test]
    fn a_save_replaces_the_folder_whole_and_leaves_no_temporary() {
        let root = tmp("replace");
        let dir = root.join("ckpt");
        save(&dir, "a", &[("x.bin", b"one"), ("y.json", b"{}")]).unwrap();
        save(&dir, "b", &[("x.bin", b"two")]).unwrap();
        let f = Folder::open(&dir).unwrap();
        assert_eq!(f.id(), Some("b"));
        assert_eq!(f.read("x.bin").unwrap(), b"two");
        assert!(!dir.join("y.json").exists(), "nothing of the previous save is mixed in");
        let names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ckpt"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_save_keeps_the_previous_folder_and_removes_its_temporary() {
        let root = tmp("fail");
        let dir = root.join("ckpt");
        save(&dir, "a", &[("x.bin", b"one")]).unwrap();
        let mut w = Writer::begin(&dir).unwrap();
        w.file("x.bin", b"two").unwrap();
        drop(w); // a failure before commit
        assert_eq!(Folder::open(&dir).unwrap().read("x.bin").unwrap(), b"one");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        assert_eq!(Writer::begin(&dir).unwrap().file("../x", b"").unwrap_err().code(), "INVALID_ARGUMENT");
        assert_eq!(Writer::begin(Path::new("")).err().map(|e| e.code()), Some("INVALID_ARGUMENT"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn damaged_and_missing_files_are_named() {
        let root = tmp("damage");
        let dir = root.join("ckpt");
        save(&dir, "a", &[("x.bin", b"0123456789"), ("y.bin", b"abc")]).unwrap();
        let mut b = std::fs::read(dir.join("x.bin")).unwrap();
        b[3] ^= 0x40;
        std::fs::write(dir.join("x.bin"), &b).unwrap();
        let f = Folder::open(&dir).unwrap();
        let e = f.read("x.bin").unwrap_err();
        assert_eq!(e.code(), "CHECKPOINT_CORRUPT");
        assert!(e.to_string().contains("x.bin") && e.to_string().contains("sha256"), "{e}");
        std::fs::remove_file(dir.join("y.bin")).unwrap();
        let e = f.verify().unwrap_err();
        assert!(e.to_string().contains("x.bin") || e.to_string().contains("y.bin"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn temporaries_of_dead_processes_are_removed_by_the_next_save() {
        let root = tmp("stale");
        // pid 4194304 is above Linux's pid_max: never alive.
        let stale = root.join(".ckpt.tmp-4194304-0");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("model.safetensors"), b"half").unwrap();
        let live = root.join(format!(".other.tmp-{}-99", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        assert_eq!(stale_pid(".ckpt.tmp-4194304-0"), Some(4194304));
        assert_eq!(stale_pid("ckpt"), None);
        save(&root.join("ckpt"), "a", &[("x", b"1")]).unwrap();
        assert!(!stale.exists());
        assert!(live.exists(), "a temporary of this (live) process is left alone");
        std::fs::remove_dir_all(root).unwrap();
    }
}
