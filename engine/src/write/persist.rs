//! The persist queue: each closed file on a persisting mount goes to under
//! storage (`Ufs::write_file`), at most `PERSISTS_MAX` at once, one version
//! of a path at a time. A failed attempt is retried after a backoff
//! (1 s doubling to 60 s, for as long as it fails); the file stays local
//! and served meanwhile, its last error shown by `stoker stat` and `sync`.

use super::{parent_of, WriteCore, PERSISTS_MAX};
use std::sync::Arc;
use std::time::Duration;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// One upload's limit: generous, a large file over a slow link takes long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) async fn run(core: Arc<WriteCore>, mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PERSISTS_MAX));
    while let Some(id) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let core = core.clone();
        tokio::spawn(async move {
            attempt(&core, id).await;
            drop(permit);
        });
    }
}

/// One attempt at persisting `id`, if it still waits and nothing else of
/// its path is under way.
async fn attempt(core: &Arc<WriteCore>, id: u64) {
    let (path, version, size) = {
        let mut p = core.pending.lock();
        let Some(f) = p.get(&id) else { return };
        if f.in_flight {
            return;
        }
        let path = f.path.clone();
        if p.iter().any(|(i, o)| *i != id && o.path == path && o.in_flight) {
            // An older version is on its way: this one goes after it.
            drop(p);
            requeue(core, id, Duration::from_millis(100));
            return;
        }
        let f = p.get_mut(&id).expect("checked above");
        f.in_flight = true;
        (path, f.version.clone(), f.size)
    };
    let res = match core.ns.mount_of(&path) {
        Ok((ufs, rel)) => {
            let ufs = ufs.inner().clone();
            let data = core.data_path(id);
            match tokio::time::timeout(ATTEMPT_TIMEOUT, ufs.write_file(rel, &data, size)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("timed out after {ATTEMPT_TIMEOUT:?}")),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match res {
        Ok(()) => {
            // Readers go to under storage from now on: learn its attributes
            // (one stat) rather than relisting the directory, before the
            // written copy stops answering for it.
            let stat = match core.ns.mount_of(&path) {
                Ok((ufs, rel)) => ufs.stat(rel).await.ok(),
                Err(_) => None,
            };
            // The record goes first: a crash between the two steps persists it once more.
            core.pending.lock().remove(&id);
            // Before the written copy stops answering for it: a listing of
            // the directory fetched across this point is fetched again.
            core.ns.listing_changes(parent_of(&path));
            let removed = core.ns.written().remove(&path, Some(&version));
            core.remove_files(id);
            if removed.is_some() {
                core.ns.invalidate(&path);
                match stat {
                    Some(a) => {
                        core.ns.note_stored(&path, &a);
                        core.ns.patch_listing(&path, Some(a));
                    }
                    None => core.ns.forget_listing(parent_of(&path)),
                }
            }
            tracing::debug!(%path, "written file persisted");
        }
        Err(e) => {
            let backoff = {
                let mut p = core.pending.lock();
                let Some(f) = p.get_mut(&id) else { return };
                f.in_flight = false;
                f.attempts += 1;
                f.last_error = Some(e.clone());
                let n = f.attempts.min(16);
                (BACKOFF_MIN * 2u32.saturating_pow(n - 1)).min(BACKOFF_MAX)
            };
            tracing::warn!(%path, error = %e, retry_in = ?backoff, "persisting a written file failed; kept locally, retrying");
            requeue(core, id, backoff);
        }
    }
}

fn requeue(core: &Arc<WriteCore>, id: u64, after: Duration) {
    let tx = core.queue.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(id);
    });
}
