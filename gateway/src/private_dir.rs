//! Directories only the gateway's user may write to: the session spool and the approval store,
//! where what another user could write (a planted approval, a session removed or planted before
//! it is shipped) would be evidence no more.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Why `dir` may not be the gateway's alone, if it may not: anybody may write to it, or it
/// belongs to another user than the gateway's (or root, who owns mounted volumes). One of the
/// gateway's own loses its group and other bits. A group-writable volume root of root's
/// (Kubernetes `fsGroup`, whose group is the gateway's) is kept; its files are checked by
/// whoever reads them.
pub fn check(dir: &Path) -> std::io::Result<Option<String>> {
    let meta = std::fs::metadata(dir)?;
    if meta.mode() & 0o002 != 0 {
        return Ok(Some(format!(
            "anybody may write to it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let own = own_uid();
    if let Some(own) = own
        && meta.uid() != own
        && meta.uid() != 0
    {
        return Ok(Some(format!(
            "it belongs to user {}, not to the gateway's user {own}",
            meta.uid()
        )));
    }
    if own == Some(meta.uid()) && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(meta.mode() & 0o7700))?;
    }
    Ok(None)
}

/// The process's own user: the owner of its /proc entry (Linux, where the gateway runs).
pub fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok()
}
