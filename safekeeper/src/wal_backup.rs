//! WAL offload: copies committed WAL to the object store and lets the acceptor remove local
//! WAL that is both offloaded and durable at the pageserver.
//!
//! ```text
//!  every BACKUP_INTERVAL_MS, per timeline:
//!    commit_lsn past the end of the segment window holding backup_lsn?
//!      list wal/<timeline>/ ─▶ skip chunks a peer already uploaded
//!      hold this lease slot? (create-only put of wal/<timeline>/uploader/<slot>)
//!        read the window's records (CRC-checked) ─▶ put chunk <start>-<end> (create-only)
//!    Acceptor::offloaded(backup_lsn) ─▶ control file ─▶ remove segments below
//!      min(backup_lsn, remote_consistent_lsn, commit_lsn)
//! ```
//!
//! A chunk holds the records that start in one `SEGMENT_BYTES` window of LSNs: every
//! safekeeper cuts the same committed WAL at the same record boundaries, so chunks are
//! identical whoever uploads them, and a create-only put that finds the chunk already there
//! has nothing left to do. Only committed WAL is uploaded: it is never truncated, so an
//! object never needs replacing. Reads verify every record's checksum first; a corrupt
//! record fails the read (and the acceptor cuts its WAL there), so bad bytes are never
//! offloaded.
//!
//! One uploader per timeline at a time: time is cut into `LEASE_SLOT_MS` slots, and in each
//! slot only the safekeeper that created the slot's lease object uploads. Nothing depends on
//! the lease for safety (uploads are create-only and deterministic); it keeps the others
//! from doing the same work. Clock skew between safekeepers can only make two slots overlap.
//! The holder deletes lease objects older than `LEASE_SLOTS_KEPT` slots.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ids::{Lsn, TimelineId};
use remote_storage::wal_objects::{self, Chunk};
use remote_storage::{PutMode, RemoteStorage};
use tracing::{debug, info, warn};

use crate::error::{Result, SafekeeperError};
use crate::limits::{
    BACKUP_INTERVAL_MS, LEASE_SLOTS_KEPT, LEASE_SLOT_MS, REPLICATION_CHUNK_BYTES_MAX, SEGMENT_BYTES,
};
use crate::server::Timeline;

/// The largest offloaded chunk accepted on download: a window plus one record that crosses
/// its end.
pub const CHUNK_BYTES_MAX: u64 = SEGMENT_BYTES + wal::RECORD_BYTES_MAX as u64;

/// The end of the segment window that holds `lsn`.
fn window_end(lsn: Lsn) -> Lsn {
    Lsn((lsn.0 / SEGMENT_BYTES + 1) * SEGMENT_BYTES)
}

/// The end of the run of chunks that continues exactly at `from`.
fn uploaded_up_to(chunks: &[Chunk], from: Lsn) -> Lsn {
    let mut pos = from;
    for chunk in chunks {
        if chunk.start == pos {
            pos = chunk.end;
        }
    }
    pos
}

fn now_slot() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ms / LEASE_SLOT_MS
}

/// The uploader lease of one timeline, as this safekeeper knows it.
pub(crate) struct Lease {
    safekeeper_id: u32,
    timeline: TimelineId,
    /// The slot this safekeeper holds, if any.
    held: Option<u64>,
    /// A slot known to be held by another safekeeper.
    lost: Option<u64>,
}

impl Lease {
    pub(crate) fn new(safekeeper_id: u32, timeline: TimelineId) -> Lease {
        Lease {
            safekeeper_id,
            timeline,
            held: None,
            lost: None,
        }
    }

    /// Whether this safekeeper may upload in slot `slot`, claiming the slot if nobody has.
    pub(crate) async fn holds(&mut self, remote: &RemoteStorage, slot: u64) -> Result<bool> {
        if self.held == Some(slot) {
            return Ok(true);
        }
        if self.lost == Some(slot) {
            return Ok(false);
        }
        let key = wal_objects::lease_key(self.timeline, slot);
        let body = Bytes::from(format!("safekeeper {}\n", self.safekeeper_id));
        let mine = match remote.put(&key, body.clone(), PutMode::CreateNew).await {
            Ok(()) => true,
            // A put whose answer was lost may have created it for us: read who holds it.
            Err(e) if e.is_already_exists() => remote.get(&key, 64).await? == body,
            Err(e) => return Err(e.into()),
        };
        if mine {
            self.held = Some(slot);
            debug!(timeline = %self.timeline, slot, "holding the WAL uploader lease");
            self.delete_old_leases(remote, slot).await;
        } else {
            self.lost = Some(slot);
        }
        Ok(mine)
    }

    async fn delete_old_leases(&self, remote: &RemoteStorage, slot: u64) {
        let prefix = format!("{}/uploader", wal_objects::wal_prefix(self.timeline));
        let Ok(objects) = remote.list(&prefix).await else {
            return;
        };
        for object in objects {
            let old = object
                .key
                .rsplit('/')
                .next()
                .and_then(wal_objects::parse_lease_name)
                .is_some_and(|s| s + LEASE_SLOTS_KEPT < slot);
            if old {
                if let Err(e) = remote.delete(&object.key).await {
                    warn!("deleting the old lease {}: {e}", object.key);
                }
            }
        }
    }
}

/// Offloads one timeline until the task is aborted.
pub(crate) async fn run(timeline: Arc<Timeline>, remote: RemoteStorage, safekeeper_id: u32) {
    let mut lease = Lease::new(safekeeper_id, timeline.id);
    let mut ticker = tokio::time::interval(Duration::from_millis(BACKUP_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = backup_once(&timeline, &remote, &mut lease).await {
            warn!(timeline = %timeline.id, "WAL offload failed (will retry): {e}");
        }
    }
}

/// One round: upload what is complete and missing, then let the acceptor remove what it may.
pub(crate) async fn backup_once(
    timeline: &Arc<Timeline>,
    remote: &RemoteStorage,
    lease: &mut Lease,
) -> Result<()> {
    let (commit_lsn, mut backup_lsn) = timeline
        .with_acceptor(|a| (a.commit_lsn(), a.backup_lsn()))
        .await?;
    if commit_lsn >= window_end(backup_lsn) {
        let chunks = wal_objects::list_chunks(remote, timeline.id).await?;
        backup_lsn = uploaded_up_to(&chunks, backup_lsn);
        while commit_lsn >= window_end(backup_lsn) {
            if !lease.holds(remote, now_slot()).await? {
                break;
            }
            let data = read_window(timeline, backup_lsn).await?;
            let end = backup_lsn.add(data.len() as u64);
            let key = wal_objects::chunk_key(timeline.id, backup_lsn, end);
            match remote.put(&key, data, PutMode::CreateNew).await {
                Ok(()) => info!(timeline = %timeline.id, "offloaded WAL {backup_lsn}..{end}"),
                // Uploaded by a peer whose lease slot overlapped ours: the same bytes.
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
            backup_lsn = end;
        }
    }
    timeline
        .with_acceptor(move |a| a.offloaded(backup_lsn))
        .await??;
    Ok(())
}

/// The committed records that start in the segment window holding `start` (a record
/// boundary), read in bounded steps so appends are not held up for long.
async fn read_window(timeline: &Arc<Timeline>, start: Lsn) -> Result<Bytes> {
    let end = window_end(start);
    let mut out = BytesMut::new();
    let mut pos = start;
    while pos < end {
        let max_bytes = ((end.0 - pos.0) as usize).min(REPLICATION_CHUNK_BYTES_MAX);
        let (data, _) = timeline
            .with_acceptor(move |a| a.read_committed(pos, max_bytes))
            .await??;
        if data.is_empty() {
            return Err(SafekeeperError::Internal(format!(
                "committed WAL at {pos} is not readable whole although commit_lsn is past {end}"
            )));
        }
        pos = pos.add(data.len() as u64);
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}

/// Offloaded WAL for a reader whose start is below this safekeeper's local WAL: whole,
/// checksum-verified records from `start` below `end`, at most `max_bytes` (but at least
/// one record); empty if the first record crosses `end`.
pub(crate) async fn read_offloaded(
    remote: &RemoteStorage,
    timeline: TimelineId,
    start: Lsn,
    end: Lsn,
    max_bytes: usize,
) -> Result<Bytes> {
    let Some(bytes) = wal_objects::read_from(remote, timeline, start, CHUNK_BYTES_MAX).await?
    else {
        return Err(SafekeeperError::Corrupt(format!(
            "WAL at {start} is neither on this safekeeper nor in the object store"
        )));
    };
    let mut pos = 0usize;
    while start.0 + (pos as u64) < end.0 {
        let lsn = start.add(pos as u64);
        match wal::next_record_len(&bytes[pos..], lsn) {
            Ok(Some(len)) if lsn.0 + len as u64 <= end.0 => {
                if pos > 0 && pos + len > max_bytes {
                    break;
                }
                pos += len;
            }
            Ok(_) => break,
            Err(e) => {
                return Err(SafekeeperError::Corrupt(format!(
                    "offloaded WAL at {lsn}: {e}"
                )))
            }
        }
    }
    Ok(bytes.slice(..pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_chunk_runs() {
        assert_eq!(window_end(Lsn(0)), Lsn(SEGMENT_BYTES));
        assert_eq!(window_end(Lsn(SEGMENT_BYTES - 1)), Lsn(SEGMENT_BYTES));
        assert_eq!(window_end(Lsn(SEGMENT_BYTES)), Lsn(2 * SEGMENT_BYTES));
        let chunk = |start, end| Chunk {
            start: Lsn(start),
            end: Lsn(end),
            size_bytes: end - start,
        };
        let chunks = [chunk(0, 100), chunk(100, 250), chunk(300, 400)];
        assert_eq!(uploaded_up_to(&chunks, Lsn(0)), Lsn(250));
        assert_eq!(uploaded_up_to(&chunks, Lsn(100)), Lsn(250));
        assert_eq!(uploaded_up_to(&chunks, Lsn(250)), Lsn(250));
        assert_eq!(uploaded_up_to(&chunks, Lsn(300)), Lsn(400));
    }

    /// Every lease asks for `slot`; exactly one holds it. Returns its index.
    async fn claim_slot(leases: &mut [Lease], remote: &RemoteStorage, slot: u64) -> usize {
        let mut holders = Vec::new();
        for (i, lease) in leases.iter_mut().enumerate() {
            if lease.holds(remote, slot).await.unwrap() {
                holders.push(i);
            }
        }
        assert_eq!(holders.len(), 1, "slot {slot}: holders {holders:?}");
        // Asking again gives the same answer.
        for (i, lease) in leases.iter_mut().enumerate() {
            assert_eq!(lease.holds(remote, slot).await.unwrap(), holders == [i]);
        }
        holders[0]
    }

    #[tokio::test]
    async fn one_lease_holder_per_slot() {
        let root = std::env::temp_dir().join(format!("omendb-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let remote = RemoteStorage::local(&root).unwrap();
        let timeline = TimelineId::from_u128(5);
        let mut leases: Vec<Lease> = (1..=3).map(|id| Lease::new(id, timeline)).collect();
        claim_slot(&mut leases, &remote, 100).await;
        let holder_of_101 = claim_slot(&mut leases, &remote, 101).await;
        // A fresh view of a taken slot (a restarted safekeeper) sees who holds it.
        let mut restarted = Lease::new(3, timeline);
        assert_eq!(
            restarted.holds(&remote, 101).await.unwrap(),
            holder_of_101 == 2
        );
        // Leases older than LEASE_SLOTS_KEPT slots are deleted by a later holder.
        claim_slot(&mut leases, &remote, 101 + LEASE_SLOTS_KEPT).await;
        let left = remote
            .list(&format!("{}/uploader", wal_objects::wal_prefix(timeline)))
            .await
            .unwrap();
        assert_eq!(left.len(), 2, "slot 101 and the newest are left: {left:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
