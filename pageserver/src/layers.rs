//! A timeline's persisted layers as one immutable snapshot ([`LayerSet`]), and reads through
//! them: point lookups and scan steps at an LSN.
//!
//! ```text
//!   LayerSet { layer map (which layers hold a key range at LSN X), files by name }
//!       │ search / range_search
//!       ▼
//!   ReadPlan: image (if any) + deltas, oldest first
//!       │ opened on first use (footer + metadata), then one page or block per read,
//!       ▼ through the block cache from the object store
//!   point lookup: newest delta with a version <= X wins, else the image, else "not here"
//!   scan step:    k-way merge by key: memory > newest delta > ... > oldest delta > image
//! ```
//!
//! Delta layers hold timeline keys (`layer_map::timeline_key`: table id then row key) of
//! several tables; an image layer holds one table's rows under their row keys. A snapshot is
//! never changed: flush and compaction build a new one that shares the already opened files
//! ([`LayerSet::with`]), so a reader that took a snapshot reads a consistent set for as long
//! as it holds it.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use ids::{Lsn, TenantId, TimelineId};
use remote_storage::RemoteStorage;

use crate::block_cache::{BlockCache, RemoteSource};
use crate::delta_layer::{DeltaCursor, DeltaLayer};
use crate::error::{PageserverError, Result};
use crate::image_layer::ImageLayer;
use crate::layer_map::{timeline_key, KeyRange, LayerInfo, LayerLsns, LayerMap};
use crate::manifest::LayerDesc;
use crate::page_source::{MemorySource, PageSource};
use crate::remote_layout;
use crate::store::{ScanLimits, ScanPage};
use crate::timeline::{AncestorRef, Timeline};

/// Where a timeline's layer files are read from.
#[derive(Clone)]
pub struct LayerStorage {
    pub remote: RemoteStorage,
    pub cache: Arc<BlockCache>,
    pub tenant: TenantId,
    pub timeline: TimelineId,
}

/// The bytes of one layer file: in memory (tests), or the object store through the cache.
pub enum LayerSource {
    Memory(MemorySource),
    Remote(RemoteSource),
}

impl PageSource for LayerSource {
    fn len(&self) -> u64 {
        match self {
            LayerSource::Memory(source) => source.len(),
            LayerSource::Remote(source) => source.len(),
        }
    }

    async fn read(&self, offset: u64, n_bytes: u64) -> Result<Bytes> {
        match self {
            LayerSource::Memory(source) => source.read(offset, n_bytes).await,
            LayerSource::Remote(source) => source.read(offset, n_bytes).await,
        }
    }
}

/// An opened layer: its metadata in memory, its pages read on demand.
pub enum OpenLayer {
    Delta(DeltaLayer<LayerSource>),
    Image(ImageLayer<LayerSource>),
}

/// One layer file of the snapshot, opened at most once and shared by every snapshot that
/// names it.
pub struct LayerFile {
    pub desc: LayerDesc,
    opened: tokio::sync::OnceCell<Arc<OpenLayer>>,
}

impl LayerFile {
    fn new(desc: LayerDesc) -> LayerFile {
        LayerFile {
            desc,
            opened: tokio::sync::OnceCell::new(),
        }
    }

    async fn open(&self, storage: &LayerStorage) -> Result<Arc<OpenLayer>> {
        let opened = self
            .opened
            .get_or_try_init(|| async {
                let key = remote_layout::layer_key(storage.tenant, storage.timeline, &self.desc);
                let source = LayerSource::Remote(RemoteSource::new(
                    storage.cache.clone(),
                    storage.remote.clone(),
                    key.clone(),
                    self.desc.size_bytes(),
                ));
                let opened = match &self.desc {
                    LayerDesc::Delta {
                        start_lsn, end_lsn, ..
                    } => {
                        let layer = DeltaLayer::open(source)
                            .await
                            .map_err(|e| at_key(e, &key))?;
                        if (layer.start_lsn().0, layer.end_lsn().0) != (*start_lsn, *end_lsn) {
                            return Err(PageserverError::corrupt(
                                format!("delta layer {key}"),
                                format!(
                                    "holds {}..{}, not what the index says",
                                    layer.start_lsn(),
                                    layer.end_lsn()
                                ),
                            ));
                        }
                        OpenLayer::Delta(layer)
                    }
                    LayerDesc::Image { lsn, .. } => {
                        let layer = ImageLayer::open(source)
                            .await
                            .map_err(|e| at_key(e, &key))?;
                        if layer.lsn().0 != *lsn {
                            return Err(PageserverError::corrupt(
                                format!("image layer {key}"),
                                format!("is at LSN {}, not what the index says", layer.lsn()),
                            ));
                        }
                        OpenLayer::Image(layer)
                    }
                };
                Ok::<_, PageserverError>(Arc::new(opened))
            })
            .await?;
        Ok(opened.clone())
    }
}

/// Names the object a corruption was found in.
pub(crate) fn at_key(error: PageserverError, key: &str) -> PageserverError {
    match error {
        // Errors from the block cache name the key already.
        PageserverError::Corrupt { what, reason } if !what.contains(key) => {
            PageserverError::corrupt(format!("{what} {key}"), reason)
        }
        other => other,
    }
}

/// What the layers say about one key at one LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The row (or `None`: no row) as of the LSN.
    Found(Option<Bytes>),
    /// No layer here has a version of the key at or below the LSN and no image covers it:
    /// the answer is the ancestor's (or no row, for a timeline without one).
    NotHere,
}

/// The newest versions the in-memory layers hold for a scan step's range (row keys, in key
/// order; `None` values are deletions), and how far they cover it.
#[derive(Debug, Default, Clone)]
pub struct MemoryRange {
    pub entries: Vec<(Bytes, Option<Bytes>)>,
    /// `None`: the whole range; `Some(key)`: every key up to and including `key`.
    pub covered_to: Option<Bytes>,
}

/// The persisted layers of a timeline, as one immutable snapshot.
#[derive(Clone, Default)]
pub struct LayerSet {
    map: LayerMap<String>,
    files: HashMap<String, Arc<LayerFile>>,
}

impl LayerSet {
    pub fn new(descs: &[LayerDesc]) -> LayerSet {
        LayerSet::default().with(descs, &[])
    }

    /// This snapshot plus `added` minus the layers named `removed`; files already opened
    /// stay opened.
    pub fn with(&self, added: &[LayerDesc], removed: &[String]) -> LayerSet {
        let mut next = self.clone();
        for name in removed {
            next.map.remove(name);
            next.files.remove(name);
        }
        for desc in added {
            let name = desc.file_name();
            next.map.insert(LayerInfo {
                id: name.clone(),
                keys: key_range_of(desc),
                lsns: match desc {
                    LayerDesc::Delta {
                        start_lsn, end_lsn, ..
                    } => LayerLsns::Delta {
                        start: Lsn(*start_lsn),
                        end: Lsn(*end_lsn),
                    },
                    LayerDesc::Image { lsn, .. } => LayerLsns::Image { lsn: Lsn(*lsn) },
                },
            });
            next.files
                .insert(name, Arc::new(LayerFile::new(desc.clone())));
        }
        next
    }

    /// The names of the layers a read at `lsn` of any table not in `skipped` (tables
    /// dropped at or below `lsn`, whose reads open no layer) may open: the same plans the
    /// reads make, so a layer outside this set is never opened by such a read.
    pub fn needed_at(&self, lsn: Lsn, skipped: &BTreeSet<u32>) -> BTreeSet<String> {
        let mut tables = BTreeSet::new();
        for file in self.files.values() {
            match &file.desc {
                LayerDesc::Delta { tables: held, .. } => tables.extend(held.iter().copied()),
                LayerDesc::Image { table, .. } => {
                    tables.insert(*table);
                }
            }
        }
        let mut needed = BTreeSet::new();
        for table in tables.difference(skipped) {
            for (_, plan) in self.map.range_search(&KeyRange::table(*table), lsn) {
                needed.extend(plan.image);
                needed.extend(self.holding(plan.deltas, *table));
            }
        }
        needed
    }

    /// The deltas among `deltas` that hold changes to `table`: a delta's key range spans
    /// from its lowest table to its highest, and the tables between that it has no change
    /// of are not read from it.
    fn holding(&self, deltas: Vec<String>, table: u32) -> Vec<String> {
        deltas
            .into_iter()
            .filter(|name| {
                self.files.get(name).is_none_or(|file| match &file.desc {
                    LayerDesc::Delta { tables, .. } => tables.binary_search(&table).is_ok(),
                    LayerDesc::Image { .. } => true,
                })
            })
            .collect()
    }

    pub fn descs(&self) -> impl Iterator<Item = &LayerDesc> {
        self.files.values().map(|file| &file.desc)
    }

    async fn open(&self, storage: &LayerStorage, name: &str) -> Result<Arc<OpenLayer>> {
        let file = self.files.get(name).ok_or_else(|| {
            PageserverError::Internal(format!("layer {name} is in the map but not the set"))
        })?;
        file.open(storage).await
    }

    /// The row `(table, key)` as of `lsn`, from the newest delta that has a version of it at
    /// or below `lsn`, else from the covering image.
    pub async fn get(
        &self,
        storage: &LayerStorage,
        table: u32,
        key: &[u8],
        lsn: Lsn,
    ) -> Result<Lookup> {
        let full_key = timeline_key(table, key);
        let plan = self.map.search(&full_key, lsn);
        for name in self.holding(plan.deltas, table).iter().rev() {
            let OpenLayer::Delta(delta) = &*self.open(storage, name).await? else {
                return Err(wrong_kind(name));
            };
            if let Some((_, value)) = delta.newest_at(&full_key, lsn).await? {
                return Ok(Lookup::Found(value));
            }
        }
        match &plan.image {
            Some(name) => {
                let OpenLayer::Image(image) = &*self.open(storage, name).await? else {
                    return Err(wrong_kind(name));
                };
                Ok(Lookup::Found(image.get(key).await?))
            }
            None => Ok(Lookup::NotHere),
        }
    }

    /// One step of a scan of `table` over `[start, end)` after `after_key`, at `lsn`,
    /// merging `memory` (the in-memory layers' newest versions for the same range) over the
    /// persisted layers and, for a branch, under them the `ancestor`'s state at the branch
    /// point where no image of this timeline covers a piece; within `limits`, like
    /// `Store::scan`.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan_step(
        &self,
        storage: &LayerStorage,
        table: u32,
        range: (Option<&[u8]>, Option<&[u8]>),
        lsn: Lsn,
        after_key: Option<&[u8]>,
        memory: &MemoryRange,
        ancestor: Option<&AncestorRef>,
        limits: ScanLimits,
    ) -> Result<ScanPage> {
        let mut page = ScanPage::default();
        let (start, end) = range;
        let lower = scan_lower_bound(start, after_key);
        let range_end = match end {
            Some(end) => Some(timeline_key(table, end)),
            None => KeyRange::table(table).end,
        };
        let mut keys = KeyRange {
            start: match lower {
                Bound::Included(key) => timeline_key(table, key),
                Bound::Excluded(key) => successor(timeline_key(table, key)),
                Bound::Unbounded => timeline_key(table, &[]),
            },
            end: range_end.clone(),
        };
        if let Some(covered) = &memory.covered_to {
            let limit = successor(timeline_key(table, covered));
            if keys.end.as_ref().is_none_or(|end| limit < *end) {
                keys.end = Some(limit);
            }
        }
        if keys.end.as_ref().is_some_and(|end| *end <= keys.start) {
            page.resume_after = memory.covered_to.clone();
            return Ok(page);
        }
        let rows_max = limits.rows_max.max(1);
        let keys_examined_max = limits.keys_examined_max.max(1);
        let mut n_bytes = 0usize;
        let mut n_examined = 0usize;
        let mut last_done: Option<Bytes> = None;
        let memory_entries: Vec<(Bytes, Option<Bytes>)> = memory
            .entries
            .iter()
            .map(|(key, value)| (timeline_key(table, key), value.clone()))
            .collect();

        for (piece, plan) in self.map.range_search(&keys, lsn) {
            let deltas = self.holding(plan.deltas, table);
            let mut opened = Vec::with_capacity(deltas.len() + 1);
            for name in deltas.iter().rev() {
                opened.push(self.open(storage, name).await?);
            }
            if let Some(name) = &plan.image {
                opened.push(self.open(storage, name).await?);
            }
            let from = memory_entries.partition_point(|(key, _)| *key < piece.start);
            let to = match &piece.end {
                Some(end) => memory_entries.partition_point(|(key, _)| key < end),
                None => memory_entries.len(),
            };
            let mut cursors: Vec<Cursor<'_>> =
                vec![Cursor::Memory(memory_entries[from..to].iter())];
            for layer in &opened {
                cursors.push(match &**layer {
                    OpenLayer::Delta(delta) => Cursor::Delta(DeltaCursor::new(delta, &piece.start)),
                    OpenLayer::Image(image) => {
                        Cursor::Image(ImageCursor::new(image, table, &piece.start))
                    }
                });
            }
            if let (None, Some(ancestor)) = (&plan.image, ancestor) {
                cursors.push(Cursor::Ancestor(AncestorCursor::new(
                    ancestor,
                    table,
                    &piece,
                    lsn.min(ancestor.lsn),
                )));
            }
            let mut heads = Vec::with_capacity(cursors.len());
            for cursor in &mut cursors {
                heads.push(cursor.next(lsn, &piece).await?);
            }
            loop {
                let Some(key) = heads.iter().flatten().map(|(key, _)| key).min().cloned() else {
                    break;
                };
                if n_examined >= keys_examined_max || page.rows.len() >= rows_max {
                    page.resume_after = last_done;
                    return Ok(page);
                }
                // The first (newest) source with this key decides; the others are older.
                let mut winner: Option<Option<Bytes>> = None;
                for (head, cursor) in heads.iter_mut().zip(cursors.iter_mut()) {
                    if head.as_ref().is_some_and(|(k, _)| *k == key) {
                        let (_, value) = head.take().expect("checked above");
                        winner.get_or_insert(value);
                        *head = cursor.next(lsn, &piece).await?;
                    }
                }
                n_examined += 1;
                let row_key = key.slice(4..);
                if let Some(Some(value)) = winner {
                    let row_bytes = row_key.len() + value.len();
                    if !page.rows.is_empty() && n_bytes + row_bytes > limits.bytes_max {
                        page.resume_after = last_done;
                        return Ok(page);
                    }
                    n_bytes += row_bytes;
                    page.rows.push((row_key.clone(), value));
                }
                last_done = Some(row_key);
            }
        }
        // The range is done, unless the memory layers covered only part of it.
        if let Some(covered) = &memory.covered_to {
            let covered_end = successor(timeline_key(table, covered));
            if range_end.is_none_or(|end| covered_end < end) {
                page.resume_after = Some(covered.clone());
            }
        }
        Ok(page)
    }
}

/// The lower bound of a scan step over `[start, ..)` resuming after `after_key`.
pub fn scan_lower_bound<'a>(
    start: Option<&'a [u8]>,
    after_key: Option<&'a [u8]>,
) -> Bound<&'a [u8]> {
    match (start, after_key) {
        (_, Some(after)) if start.is_none_or(|start| after >= start) => Bound::Excluded(after),
        (Some(start), _) => Bound::Included(start),
        (None, _) => Bound::Unbounded,
    }
}

/// The smallest key above `key`.
fn successor(key: Bytes) -> Bytes {
    let mut next = key.to_vec();
    next.push(0);
    Bytes::from(next)
}

fn wrong_kind(name: &str) -> PageserverError {
    PageserverError::Internal(format!("layer {name} is not of the kind its name says"))
}

/// The keys a layer covers in the layer map: an image its table; a delta the tables from its
/// lowest to its highest (empty when it changed none).
fn key_range_of(desc: &LayerDesc) -> KeyRange {
    match desc {
        LayerDesc::Image { table, .. } => KeyRange::table(*table),
        LayerDesc::Delta { tables, .. } => match (tables.first(), tables.last()) {
            (Some(first), Some(last)) => KeyRange {
                start: KeyRange::table(*first).start,
                end: KeyRange::table(*last).end,
            },
            _ => KeyRange {
                start: Bytes::new(),
                end: Some(Bytes::new()),
            },
        },
    }
}

/// One source of a scan step's merge, giving (timeline key, newest version at or below the
/// LSN) in key order within one piece of the range.
enum Cursor<'a> {
    Memory(std::slice::Iter<'a, (Bytes, Option<Bytes>)>),
    Delta(DeltaCursor<'a, LayerSource>),
    Image(ImageCursor<'a>),
    Ancestor(AncestorCursor<'a>),
}

impl Cursor<'_> {
    async fn next(&mut self, lsn: Lsn, piece: &KeyRange) -> Result<Option<(Bytes, Option<Bytes>)>> {
        let next = match self {
            Cursor::Memory(entries) => entries.next().cloned(),
            Cursor::Delta(cursor) => cursor
                .next_key(lsn)
                .await?
                .map(|(key, _, value)| (key, value)),
            Cursor::Image(cursor) => cursor.next().await?,
            Cursor::Ancestor(cursor) => cursor.next().await?,
        };
        Ok(next.filter(|(key, _)| piece.contains(key)))
    }
}

/// The rows of one table in one piece of a branch's key range, read from its ancestor at
/// the branch point, one ancestor scan step at a time (the ancestor merges its own memory,
/// layers and ancestors).
struct AncestorCursor<'a> {
    timeline: &'a Timeline,
    table: u32,
    lsn: Lsn,
    /// Row keys: from `start` (inclusive) to `end` (exclusive, `None`: the table's end).
    start: Bytes,
    end: Option<Bytes>,
    after: Option<Bytes>,
    rows: std::vec::IntoIter<(Bytes, Bytes)>,
    done: bool,
}

impl<'a> AncestorCursor<'a> {
    fn new(ancestor: &'a AncestorRef, table: u32, piece: &KeyRange, lsn: Lsn) -> Self {
        let prefix = table.to_be_bytes();
        // A piece lies within the table's key range: its start has the table's prefix (or
        // precedes the table), and an end without the prefix is the table's end.
        let start = piece
            .start
            .strip_prefix(&prefix[..])
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        let end = piece
            .end
            .as_ref()
            .and_then(|end| end.strip_prefix(&prefix[..]))
            .map(Bytes::copy_from_slice);
        AncestorCursor {
            timeline: &ancestor.timeline,
            table,
            lsn,
            start,
            end,
            after: None,
            rows: Vec::new().into_iter(),
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        loop {
            if let Some((key, value)) = self.rows.next() {
                return Ok(Some((timeline_key(self.table, &key), Some(value))));
            }
            if self.done {
                return Ok(None);
            }
            let page = Box::pin(self.timeline.scan(
                self.table,
                (Some(&self.start[..]), self.end.as_deref()),
                self.lsn,
                self.after.as_deref(),
                ANCESTOR_SCAN_LIMITS,
            ))
            .await?;
            self.rows = page.rows.into_iter();
            match page.resume_after {
                Some(key) => self.after = Some(key),
                None => self.done = true,
            }
        }
    }
}

/// One step of an ancestor's scan under a branch's scan step.
const ANCESTOR_SCAN_LIMITS: ScanLimits = ScanLimits {
    rows_max: 1024,
    bytes_max: 1 << 20,
    keys_examined_max: crate::limits::SCAN_KEYS_EXAMINED_MAX,
};

/// Rows of one table's image layer from a start key on, one page at a time.
struct ImageCursor<'a> {
    image: &'a ImageLayer<LayerSource>,
    table: u32,
    start: Bytes,
    page: Option<usize>,
    rows: std::vec::IntoIter<(Bytes, Bytes)>,
}

impl<'a> ImageCursor<'a> {
    /// From the timeline key `start` on (keys of other tables give no rows).
    fn new(image: &'a ImageLayer<LayerSource>, table: u32, start: &[u8]) -> ImageCursor<'a> {
        let table_prefix = table.to_be_bytes();
        let row_start = match start.strip_prefix(&table_prefix[..]) {
            Some(row_key) => Bytes::copy_from_slice(row_key),
            None if start < &table_prefix[..] => Bytes::new(),
            // A start past this table: no rows.
            None => {
                return ImageCursor {
                    image,
                    table,
                    start: Bytes::new(),
                    page: Some(image.n_pages()),
                    rows: Vec::new().into_iter(),
                }
            }
        };
        let page = image.page_for(&row_start).or(Some(image.n_pages()));
        ImageCursor {
            image,
            table,
            start: row_start,
            page,
            rows: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        loop {
            if let Some((key, value)) = self.rows.next() {
                if key < self.start {
                    continue;
                }
                return Ok(Some((timeline_key(self.table, &key), Some(value))));
            }
            let Some(page) = self.page else {
                return Ok(None);
            };
            if page >= self.image.n_pages() {
                self.page = None;
                return Ok(None);
            }
            self.rows = self.image.read_page(page).await?.into_iter();
            self.page = Some(page + 1);
        }
    }
}
