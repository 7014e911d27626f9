//! Reloading files that change on disk (certificates, the API-key file) without a restart.
//!
//! The files are polled, not watched with inotify: Kubernetes updates a mounted secret by
//! swapping a `..data` symlink, cert-manager and editors rename over files, and inotify misses
//! or mis-reports several of these. Each poll reads the files and compares a SHA-256 of their
//! contents (not their mtime, which a symlink swap need not change). The bytes that were
//! hashed are the bytes handed to the loader, so a file changing between the two cannot slip
//! through. A new content that fails to load keeps the old one in service; the failure is
//! logged once per distinct content, and retried as soon as the content changes again.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often watched files are read. Small files, read once a second: negligible cost, and a
/// rotation is picked up within about a second.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// SHA-256 over the files' contents, each prefixed by its length so that moving bytes from one
/// file to the next changes the digest.
pub fn fingerprint(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in contents {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Reads every file in `paths`, in order.
pub fn read_all(paths: &[PathBuf]) -> std::io::Result<Vec<Vec<u8>>> {
    paths.iter().map(std::fs::read).collect()
}

/// What one file loads into, in service while the next version is read: swapped whole.
pub type Swapped<T> = Arc<RwLock<Arc<T>>>;

/// Polls one file (see [`spawn_watch`]) and puts what `parse` makes of a changed version into
/// `slot`; a version `parse` refuses keeps the old one in service.
pub fn watch_file<T, P>(
    what: &'static str,
    path: PathBuf,
    interval: Duration,
    initial: [u8; 32],
    slot: Swapped<T>,
    parse: P,
) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    P: Fn(&[u8]) -> Result<T, String> + Send + 'static,
{
    spawn_watch(what, vec![path], interval, initial, move |contents| {
        let new = parse(&contents[0])?;
        *slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(())
    })
}

/// Polls `paths` every `interval` and calls `load` with their contents whenever they differ
/// from the contents last loaded (`initial` is the fingerprint of what is in service now).
/// `what` names the files in logs. The task runs until aborted.
pub fn spawn_watch<F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    initial: [u8; 32],
    mut load: F,
) -> JoinHandle<()>
where
    F: FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut current = initial;
        // The last content that failed (to load or to be read), so a broken file is reported
        // once, not every second.
        let mut failed: Option<[u8; 32]> = None;
        let mut read_failed = false;
        let shown = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        loop {
            tokio::time::sleep(interval).await;
            let paths = paths.clone();
            // File reads block: keep them off the async workers that serve requests.
            let contents = match tokio::task::spawn_blocking(move || read_all(&paths)).await {
                Ok(Ok(c)) => {
                    read_failed = false;
                    c
                }
                Ok(Err(e)) => {
                    if !read_failed {
                        tracing::error!(files = %shown, error = %e, "cannot read the {what}; the loaded one stays in service");
                        read_failed = true;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let digest = fingerprint(&contents);
            if digest == current || Some(digest) == failed {
                continue;
            }
            match load(&contents) {
                Ok(()) => {
                    current = digest;
                    failed = None;
                    tracing::info!(files = %shown, "reloaded the {what}");
                }
                Err(e) => {
                    failed = Some(digest);
                    tracing::error!(files = %shown, error = %e, "the changed {what} is not valid; the loaded one stays in service");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_sees_content_and_boundaries() {
        let a = fingerprint(&[b"ab".to_vec(), b"c".to_vec()]);
        let b = fingerprint(&[b"a".to_vec(), b"bc".to_vec()]);
        let c = fingerprint(&[b"ab".to_vec(), b"c".to_vec()]);
        assert_ne!(
            a, b,
            "bytes moved between files must change the fingerprint"
        );
        assert_eq!(a, c);
    }
}
