//! Column scans of a timeline: Parquet column pages at an image LSN merged with the newer
//! changes, so that a scan at LSN X is exact.
//!
//! ```text
//!  ColumnScan(table, X, columns, predicates)
//!    │ table definition: the catalog row at X
//!    ▼
//!  newest image of the table at or below X with column pages (this timeline's LayerSet)
//!    │ none (new table, a branch whose image is its ancestor's, another schema):
//!    │   row scan at X (Timeline::scan), decoded to Arrow ──────────────────────┐
//!    ▼                                                                         │
//!  column pages, one row group at a time, through the block cache:            │
//!    projection + predicate pruning (row groups by statistics, pages by the    │
//!    page index), always with __omendb_key                                     │
//!    │                                                                         │
//!    │   changes above the image LSN up to X, newest version per key           │
//!    │   (deletions included), merged by key: open in-memory layer > frozen    │
//!    │   layers > delta layers, newest first                                   │
//!    ▼                                                                         ▼
//!  merge by key: a page row whose key changed is dropped; changed rows that exist at X
//!  are decoded with rowcodec; every row is tested against the predicates ─▶ batches
//! ```
//!
//! Invariants: the answer holds every row of the table at X that may satisfy the
//! predicates, each once, and no row that provably fails one (the rules of
//! [`column_pages::may_match_rows`]; a predicate that cannot be decided keeps the row, so the
//! caller filters again). The in-memory layers and the [`LayerSet`](crate::layers::LayerSet)
//! are taken under one read lock, so together they hold every commit up to X exactly once;
//! every in-memory version lies above the image LSN (images are made at
//! `remote_consistent_lsn`), which is checked, and the row scan answers if it does not hold.
//!
//! Delta layers are opened again for each scan (footer and block index, through the block
//! cache): `LayerSet` keeps its opened layers to itself.
//!
//! Memory: one row group of the projected columns, one block per delta layer, at most
//! `batch_rows` decoded changed rows, and the references to the open in-memory layer's
//! versions of the table (taken under the read lock; frozen layers are immutable and read a
//! chunk at a time after it). Does I/O through the block cache; `serve_column_scan` writes
//! to the client.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, RecordBatch, RecordBatchOptions,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamEncoder;
use bytes::{Bytes, BytesMut};
use ids::Lsn;
use pageserver_api::{ErrorKind, Request, Response, COLUMN_BATCH_IPC_BYTES_MAX};
use rowcodec::{BatchBuilder, TableDef, CATALOG_TABLE_ID, FIRST_USER_TABLE_ID, KEY_COLUMN};
use tokio::io::AsyncWrite;

use super::{FrozenLayer, Timeline};
use crate::block_cache::RemoteSource;
use crate::column_pages::{self, ColumnPages, ColumnPredicate, ScanStats};
use crate::delta_layer::{DeltaCursor, DeltaLayer};
use crate::error::{PageserverError, Result};
use crate::layers::{at_key, LayerSource};
use crate::limits::SCAN_KEYS_EXAMINED_MAX;
use crate::manifest::LayerDesc;
use crate::remote_layout;
use crate::store::{ScanLimits, Store};

/// Keys of a frozen in-memory layer read per step of the change merge.
const FROZEN_LAYER_CHUNK_KEYS: usize = 4096;

/// Which way a column scan was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnScanPath {
    /// The table has no definition at the LSN (not yet created, or dropped): no rows.
    NoTable,
    /// Column pages of the image at `image_lsn`, merged with the changes above it.
    ColumnPages { image_lsn: Lsn },
    /// No usable column pages: the row scan at the LSN, converted to Arrow.
    RowScan,
}

/// What a column scan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnScanStats {
    pub path: ColumnScanPath,
    /// The column pages' pruning and reads (data pages only), summed over row groups.
    pub pages: ScanStats,
    /// The size of the column pages file read, when there was one.
    pub column_bytes: u64,
    /// Keys with a version above the image LSN (up to the scan's LSN).
    pub n_changed_keys: u64,
    /// Rows handed to the sink.
    pub rows_returned: u64,
}

/// Takes the batches of a column scan's answer, in the order they are made.
pub trait ColumnBatchSink: Send {
    /// One batch; an error stops the scan and is returned as it is.
    fn send(&mut self, batch: RecordBatch) -> impl Future<Output = Result<()>> + Send;
}

/// Collects the batches (for tests and callers that want them all).
impl ColumnBatchSink for Vec<RecordBatch> {
    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        self.push(batch);
        Ok(())
    }
}

/// A column scan's request, as the read protocol carries it.
#[derive(Debug, Clone)]
pub struct ColumnScanRequest {
    pub table: u32,
    pub lsn: Lsn,
    /// Indices of the table's columns; answered in table order, each once.
    pub columns: Vec<usize>,
    pub predicates: Vec<ColumnPredicate>,
    pub batch_rows: usize,
}

impl ColumnScanRequest {
    /// The request's fields from the wire; `None` for another request.
    pub fn from_wire(request: &Request) -> Option<ColumnScanRequest> {
        let Request::ColumnScan {
            table,
            lsn,
            columns,
            predicates,
            batch_rows,
            ..
        } = request
        else {
            return None;
        };
        Some(ColumnScanRequest {
            table: *table,
            lsn: *lsn,
            columns: columns.iter().map(|c| *c as usize).collect(),
            predicates: predicates.iter().map(predicate_from_wire).collect(),
            batch_rows: *batch_rows as usize,
        })
    }

    /// Why this request cannot be answered for a table of `def`, if it cannot.
    pub fn check(&self, def: &TableDef) -> std::result::Result<(), String> {
        let n_columns = def.columns.len();
        if let Some(column) = self
            .columns
            .iter()
            .chain(self.predicates.iter().map(|p| &p.column))
            .find(|c| **c >= n_columns)
        {
            return Err(format!(
                "table {} ({}) has {n_columns} columns, no column {column}",
                def.name, def.id
            ));
        }
        if self.batch_rows == 0 {
            return Err("batches of zero rows".into());
        }
        Ok(())
    }
}

fn predicate_from_wire(predicate: &pageserver_api::ColumnPredicate) -> ColumnPredicate {
    ColumnPredicate {
        column: predicate.column as usize,
        op: predicate.op,
        literal: predicate.literal.clone(),
    }
}

/// What the scan needs from the timeline's state, taken under one read lock.
struct Snapshot {
    /// The newest image of the table at or below the LSN with column pages: (LSN, its
    /// descriptor).
    image: Option<(Lsn, LayerDesc)>,
    /// The delta layers that may hold changes of the table above the image, newest first.
    deltas: Vec<LayerDesc>,
    /// The open in-memory layer's newest versions of the table at or below the LSN.
    open: Vec<(Bytes, Option<Bytes>)>,
    /// The frozen in-memory layers, newest first.
    frozen: Vec<Arc<FrozenLayer>>,
    /// Where the oldest in-memory layer starts: every version in memory lies above it.
    memory_start: Lsn,
}

impl Timeline {
    /// The definition of user table `table` at `lsn` (its catalog row), `None` if it has none
    /// there. The caller has waited for `lsn`.
    pub async fn table_def_at(&self, table: u32, lsn: Lsn) -> Result<Option<TableDef>> {
        let limits = ScanLimits {
            rows_max: pageserver_api::SCAN_BATCH_ROWS_MAX,
            bytes_max: pageserver_api::SCAN_BATCH_BYTES_MAX,
            keys_examined_max: SCAN_KEYS_EXAMINED_MAX,
        };
        let mut undecodable = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = self
                .scan(
                    CATALOG_TABLE_ID,
                    (None, None),
                    lsn,
                    after.as_deref(),
                    limits,
                )
                .await?;
            for (name, value) in &page.rows {
                match TableDef::decode(value) {
                    Ok(def) if def.id == table => return Ok(Some(def)),
                    Ok(_) => {}
                    Err(err) => {
                        undecodable.push(format!("{:?}: {err}", String::from_utf8_lossy(name)))
                    }
                }
            }
            match page.resume_after {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        if undecodable.is_empty() {
            Ok(None)
        } else {
            // The table's own row may be among them: "no such table" would be a wrong answer.
            Err(PageserverError::corrupt(
                format!("catalog of timeline {} at LSN {lsn}", self.timeline_id),
                format!("rows that do not decode: {}", undecodable.join("; ")),
            ))
        }
    }

    /// Scans `request.table` (of definition `def`, as of `request.lsn`) column by column and
    /// hands `sink` batches of the requested columns in table order, then the storage key
    /// ([`KEY_COLUMN`]), holding every row at the LSN that may satisfy the predicates (see the
    /// module docs). The caller has waited for the LSN and checked the request against `def`.
    pub async fn column_scan(
        &self,
        def: &TableDef,
        request: &ColumnScanRequest,
        sink: &mut impl ColumnBatchSink,
    ) -> Result<ColumnScanStats> {
        request.check(def).map_err(|reason| {
            PageserverError::Internal(format!("unchecked column scan: {reason}"))
        })?;
        let output = Output::new(def, request);
        let mut stats = ColumnScanStats {
            path: ColumnScanPath::RowScan,
            pages: ScanStats::default(),
            column_bytes: 0,
            n_changed_keys: 0,
            rows_returned: 0,
        };
        let Some(snapshot) = self.column_snapshot(request.table, request.lsn)? else {
            // Dropped at or below the LSN.
            stats.path = ColumnScanPath::NoTable;
            return Ok(stats);
        };
        let usable_image = snapshot
            .image
            .clone()
            .filter(|(image_lsn, _)| snapshot.memory_start >= *image_lsn);
        if let Some((image_lsn, image)) = usable_image {
            let column_key = remote_layout::column_key(self.tenant_id, self.timeline_id, &image);
            let column_bytes = match &image {
                LayerDesc::Image { column_bytes, .. } => *column_bytes,
                LayerDesc::Delta { .. } => None,
            };
            if let (Some(key), Some(column_bytes)) = (column_key, column_bytes) {
                let source = RemoteSource::new(
                    self.storage.cache.clone(),
                    self.storage.remote.clone(),
                    key.clone(),
                    column_bytes,
                );
                let pages = ColumnPages::open(&source)
                    .await
                    .map_err(|e| at_key(e, &key))?;
                if pages_match_def(&pages, def) {
                    stats.path = ColumnScanPath::ColumnPages { image_lsn };
                    stats.column_bytes = column_bytes;
                    self.scan_pages_and_changes(
                        &pages, &source, &key, image_lsn, snapshot, &output, request, sink,
                        &mut stats,
                    )
                    .await?;
                    return Ok(stats);
                }
                tracing::warn!(
                    "timeline {}: column pages {key} do not have the columns of table {} at LSN {}; scanning rows",
                    self.timeline_id,
                    def.name,
                    request.lsn
                );
            }
        }
        self.scan_rows(&output, request, sink, &mut stats).await?;
        Ok(stats)
    }

    /// The image, deltas and in-memory versions a column scan of `table` at `lsn` reads;
    /// `None` when the table was dropped at or below `lsn`.
    fn column_snapshot(&self, table: u32, lsn: Lsn) -> Result<Option<Snapshot>> {
        self.check_readable(lsn)?;
        let state = self.read_state()?;
        if state
            .dropped
            .get(&table)
            .is_some_and(|dropped| *dropped <= lsn)
        {
            return Ok(None);
        }
        // Only the newest image at or below X is used (and only if it has column pages):
        // garbage collection keeps no older one, nor the deltas below it.
        let image = state
            .layers
            .descs()
            .filter_map(|desc| match desc {
                LayerDesc::Image {
                    table: image_table,
                    lsn: image_lsn,
                    ..
                } if *image_table == table && Lsn(*image_lsn) <= lsn => {
                    Some((Lsn(*image_lsn), desc.clone()))
                }
                _ => None,
            })
            .max_by_key(|(image_lsn, _)| *image_lsn)
            .filter(|(_, desc)| desc.column_file_name().is_some());
        let mut deltas: Vec<LayerDesc> = match &image {
            None => Vec::new(),
            Some((image_lsn, _)) => state
                .layers
                .descs()
                .filter(|desc| match desc {
                    LayerDesc::Delta {
                        start_lsn,
                        end_lsn,
                        tables,
                        ..
                    } => {
                        Lsn(*end_lsn) > *image_lsn
                            && Lsn(*start_lsn) < lsn
                            && tables.binary_search(&table).is_ok()
                    }
                    LayerDesc::Image { .. } => false,
                })
                .cloned()
                .collect(),
        };
        deltas.sort_by_key(|desc| match desc {
            LayerDesc::Delta { end_lsn, .. } => std::cmp::Reverse(*end_lsn),
            LayerDesc::Image { .. } => std::cmp::Reverse(0),
        });
        let open = match &image {
            None => Vec::new(),
            Some(_) => {
                state
                    .open
                    .newest_versions_in_range(table, Bound::Unbounded, None, lsn, usize::MAX)
                    .0
            }
        };
        let memory_start = state
            .frozen
            .first()
            .map_or(state.open_start, |frozen| frozen.start);
        Ok(Some(Snapshot {
            image,
            deltas,
            open,
            frozen: state.frozen.iter().rev().cloned().collect(),
            memory_start,
        }))
    }

    /// The column pages' rows merged with the changes above `image_lsn`.
    #[allow(clippy::too_many_arguments)]
    async fn scan_pages_and_changes(
        &self,
        pages: &ColumnPages,
        source: &RemoteSource,
        key: &str,
        image_lsn: Lsn,
        snapshot: Snapshot,
        output: &Output,
        request: &ColumnScanRequest,
        sink: &mut impl ColumnBatchSink,
        stats: &mut ColumnScanStats,
    ) -> Result<()> {
        let lsn = request.lsn;
        let mut deltas = Vec::with_capacity(snapshot.deltas.len());
        for desc in &snapshot.deltas {
            let layer_key = remote_layout::layer_key(self.tenant_id, self.timeline_id, desc);
            let layer = DeltaLayer::open(LayerSource::Remote(RemoteSource::new(
                self.storage.cache.clone(),
                self.storage.remote.clone(),
                layer_key.clone(),
                desc.size_bytes(),
            )))
            .await
            .map_err(|e| at_key(e, &layer_key))?;
            deltas.push(layer);
        }
        let table_start = crate::layer_map::timeline_key(request.table, &[]);
        let mut sources = Vec::with_capacity(1 + snapshot.frozen.len() + deltas.len());
        sources.push(ChangeSource::Entries(snapshot.open.into_iter()));
        for frozen in &snapshot.frozen {
            sources.push(ChangeSource::Frozen(FrozenCursor {
                store: &frozen.store,
                table: request.table,
                lsn,
                after: None,
                buffer: VecDeque::new(),
                done: false,
            }));
        }
        for delta in &deltas {
            sources.push(ChangeSource::Delta {
                cursor: DeltaCursor::new(delta, &table_start),
                table: request.table,
                lsn,
                image_lsn,
            });
        }
        let mut changes = ChangeMerge::new(sources).await?;
        let mut pending = ChangedRows::new(output, request.batch_rows);

        // The pages are read with the predicates' columns too, to test rows against them.
        let mut read_columns: Vec<usize> = request
            .columns
            .iter()
            .chain(request.predicates.iter().map(|p| &p.column))
            .copied()
            .collect();
        read_columns.sort_unstable();
        read_columns.dedup();
        let read_predicates: Vec<ColumnPredicate> = request
            .predicates
            .iter()
            .map(|p| ColumnPredicate {
                column: read_columns
                    .binary_search(&p.column)
                    .expect("every predicate column is read"),
                ..p.clone()
            })
            .collect();
        // Positions of the output columns (then the key) among the columns read.
        let mut output_positions: Vec<usize> = output
            .columns
            .iter()
            .map(|c| {
                read_columns
                    .binary_search(c)
                    .expect("every output column is read")
            })
            .collect();
        output_positions.push(read_columns.len());

        for row_group in 0..pages.n_row_groups() {
            let scan = pages
                .scan_row_groups(
                    source,
                    Some(&read_columns),
                    &request.predicates,
                    request.batch_rows,
                    row_group..row_group + 1,
                )
                .await
                .map_err(|e| at_key(e, key))?;
            add_scan_stats(&mut stats.pages, &scan.stats);
            for batch in scan.batches {
                let keys = batch
                    .column(read_columns.len())
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .ok_or_else(|| {
                        PageserverError::corrupt(
                            format!("column pages {key}"),
                            "the key column is not binary",
                        )
                    })?
                    .clone();
                let mut keep = column_pages::may_match_rows(&batch, &read_predicates);
                for (row, keep) in keep.iter_mut().enumerate() {
                    if keys.is_null(row) {
                        return Err(PageserverError::corrupt(
                            format!("column pages {key}"),
                            "a row without a key",
                        ));
                    }
                    let row_key = keys.value(row);
                    // Changes below this key come first; a change of this key replaces it.
                    while let Some(next) = changes.peek_key() {
                        if next.as_ref() > row_key {
                            break;
                        }
                        let replaces = next.as_ref() == row_key;
                        let (change_key, value) = changes.next().await?.expect("peeked");
                        stats.n_changed_keys += 1;
                        if let Some(value) = value {
                            pending.push(change_key, value, sink, stats).await?;
                        }
                        if replaces {
                            *keep = false;
                            break;
                        }
                    }
                }
                let kept = arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))
                    .map_err(|e| internal(format!("filtering column pages rows: {e}")))?;
                if kept.num_rows() > 0 {
                    let projected = kept
                        .project(&output_positions)
                        .map_err(|e| internal(format!("projecting column pages rows: {e}")))?;
                    let batch = output.rebatch(projected)?;
                    stats.rows_returned += batch.num_rows() as u64;
                    sink.send(batch).await?;
                }
            }
        }
        while let Some((change_key, value)) = changes.next().await? {
            stats.n_changed_keys += 1;
            if let Some(value) = value {
                pending.push(change_key, value, sink, stats).await?;
            }
        }
        pending.flush(sink, stats).await
    }

    /// The fallback: the row scan at the LSN, decoded, tested and projected.
    async fn scan_rows(
        &self,
        output: &Output,
        request: &ColumnScanRequest,
        sink: &mut impl ColumnBatchSink,
        stats: &mut ColumnScanStats,
    ) -> Result<()> {
        let limits = ScanLimits {
            rows_max: request.batch_rows,
            bytes_max: pageserver_api::SCAN_BATCH_BYTES_MAX,
            keys_examined_max: SCAN_KEYS_EXAMINED_MAX,
        };
        let mut rows = ChangedRows::new(output, request.batch_rows);
        let mut after: Option<Bytes> = None;
        loop {
            let page = self
                .scan(
                    request.table,
                    (None, None),
                    request.lsn,
                    after.as_deref(),
                    limits,
                )
                .await?;
            for (key, value) in page.rows {
                rows.push(key, value, sink, stats).await?;
            }
            match page.resume_after {
                Some(key) => after = Some(key),
                None => return rows.flush(sink, stats).await,
            }
        }
    }
}

/// Whether the column pages hold the table's columns as `def` has them, then the key.
fn pages_match_def(pages: &ColumnPages, def: &TableDef) -> bool {
    let fields = pages.schema().fields();
    let expected = def.arrow_schema(false);
    fields.len() == expected.fields().len() + 1
        && fields
            .iter()
            .zip(expected.fields())
            .all(|(have, want)| have.name() == want.name() && have.data_type() == want.data_type())
        && fields
            .last()
            .is_some_and(|f| f.name() == KEY_COLUMN && *f.data_type() == DataType::Binary)
}

fn add_scan_stats(total: &mut ScanStats, scan: &ScanStats) {
    total.row_groups_read += scan.row_groups_read;
    total.row_groups_skipped += scan.row_groups_skipped;
    total.rows_read += scan.rows_read;
    total.rows_skipped_by_pages += scan.rows_skipped_by_pages;
    total.n_reads += scan.n_reads;
    total.bytes_read += scan.bytes_read;
}

fn internal(message: String) -> PageserverError {
    PageserverError::Internal(message)
}

/// The shape of a column scan's answer.
struct Output {
    def: TableDef,
    /// Table column indices, ascending, each once.
    columns: Vec<usize>,
    /// The columns, then the key.
    schema: SchemaRef,
    predicates: Vec<ColumnPredicate>,
}

impl Output {
    fn new(def: &TableDef, request: &ColumnScanRequest) -> Output {
        let mut columns = request.columns.clone();
        columns.sort_unstable();
        columns.dedup();
        let table_schema = def.arrow_schema(false);
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|c| table_schema.field(*c).clone())
            .collect();
        fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
        Output {
            def: def.clone(),
            columns,
            schema: Arc::new(Schema::new(fields)),
            predicates: request.predicates.clone(),
        }
    }

    /// `batch` (the output columns and the key, in order) under the output schema.
    fn rebatch(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.schema.clone(), batch.columns().to_vec(), &options)
            .map_err(|e| internal(format!("column scan batch: {e}")))
    }
}

/// Changed (or, on the row-scan path, all) rows waiting to be decoded, at most `batch_rows`.
struct ChangedRows<'a> {
    output: &'a Output,
    batch_rows: usize,
    rows: Vec<(Bytes, Bytes)>,
}

impl<'a> ChangedRows<'a> {
    fn new(output: &'a Output, batch_rows: usize) -> ChangedRows<'a> {
        ChangedRows {
            output,
            batch_rows,
            rows: Vec::with_capacity(batch_rows.min(4096)),
        }
    }

    async fn push(
        &mut self,
        key: Bytes,
        value: Bytes,
        sink: &mut impl ColumnBatchSink,
        stats: &mut ColumnScanStats,
    ) -> Result<()> {
        self.rows.push((key, value));
        if self.rows.len() >= self.batch_rows {
            self.flush(sink, stats).await?;
        }
        Ok(())
    }

    /// Decodes the rows, keeps those that may match and sends them projected.
    async fn flush(
        &mut self,
        sink: &mut impl ColumnBatchSink,
        stats: &mut ColumnScanStats,
    ) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let def = &self.output.def;
        let mut builder = BatchBuilder::new(&def.types(), def.arrow_schema(false));
        let mut keys = BinaryBuilder::with_capacity(rows.len(), rows.len() * 16);
        for (key, value) in &rows {
            builder.append_row(value).map_err(|e| {
                PageserverError::corrupt(
                    format!("row of table {} ({})", def.name, def.id),
                    e.to_string(),
                )
            })?;
            keys.append_value(key);
        }
        let values = builder
            .finish()
            .map_err(|e| internal(format!("building a batch of table {}: {e}", def.name)))?;
        let keep = BooleanArray::from(column_pages::may_match_rows(
            &values,
            &self.output.predicates,
        ));
        let mut columns: Vec<ArrayRef> = self
            .output
            .columns
            .iter()
            .map(|c| values.column(*c).clone())
            .collect();
        columns.push(Arc::new(keys.finish()));
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch =
            RecordBatch::try_new_with_options(self.output.schema.clone(), columns, &options)
                .map_err(|e| internal(format!("column scan batch: {e}")))?;
        let batch = arrow::compute::filter_record_batch(&batch, &keep)
            .map_err(|e| internal(format!("filtering changed rows: {e}")))?;
        if batch.num_rows() > 0 {
            stats.rows_returned += batch.num_rows() as u64;
            sink.send(batch).await?;
        }
        Ok(())
    }
}

/// A frozen in-memory layer's newest versions of one table at an LSN, a chunk at a time.
struct FrozenCursor<'a> {
    store: &'a Store,
    table: u32,
    lsn: Lsn,
    after: Option<Bytes>,
    buffer: VecDeque<(Bytes, Option<Bytes>)>,
    done: bool,
}

impl FrozenCursor<'_> {
    fn next(&mut self) -> Option<(Bytes, Option<Bytes>)> {
        while self.buffer.is_empty() && !self.done {
            let lower = match &self.after {
                Some(after) => Bound::Excluded(&after[..]),
                None => Bound::Unbounded,
            };
            let (entries, covered) = self.store.newest_versions_in_range(
                self.table,
                lower,
                None,
                self.lsn,
                FROZEN_LAYER_CHUNK_KEYS,
            );
            self.buffer.extend(entries);
            match covered {
                Some(last) => self.after = Some(last),
                None => self.done = true,
            }
        }
        self.buffer.pop_front()
    }
}

/// One source of changes: (row key, newest version at or below the LSN, `None` for a
/// deletion) in key order.
enum ChangeSource<'a> {
    Entries(std::vec::IntoIter<(Bytes, Option<Bytes>)>),
    Frozen(FrozenCursor<'a>),
    /// Versions at or below `image_lsn` are already in the image: not changes.
    Delta {
        cursor: DeltaCursor<'a, LayerSource>,
        table: u32,
        lsn: Lsn,
        image_lsn: Lsn,
    },
}

impl ChangeSource<'_> {
    async fn next(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        match self {
            ChangeSource::Entries(entries) => Ok(entries.next()),
            ChangeSource::Frozen(cursor) => Ok(cursor.next()),
            ChangeSource::Delta {
                cursor,
                table,
                lsn,
                image_lsn,
            } => loop {
                let Some((key, version_lsn, value)) = cursor.next_key(*lsn).await? else {
                    return Ok(None);
                };
                if key.len() < 4 || key[..4] != table.to_be_bytes() {
                    // Keys are sorted: past this table's, there is nothing more of it.
                    return Ok(None);
                }
                if version_lsn > *image_lsn {
                    return Ok(Some((key.slice(4..), value)));
                }
            },
        }
    }
}

/// The changes of every source merged by key; for a key in several sources, the first
/// (newest) source's version.
struct ChangeMerge<'a> {
    sources: Vec<ChangeSource<'a>>,
    heads: Vec<Option<(Bytes, Option<Bytes>)>>,
}

impl<'a> ChangeMerge<'a> {
    async fn new(mut sources: Vec<ChangeSource<'a>>) -> Result<ChangeMerge<'a>> {
        let mut heads = Vec::with_capacity(sources.len());
        for source in &mut sources {
            heads.push(source.next().await?);
        }
        Ok(ChangeMerge { sources, heads })
    }

    fn peek_key(&self) -> Option<&Bytes> {
        self.heads.iter().flatten().map(|(key, _)| key).min()
    }

    async fn next(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        let Some(key) = self.peek_key().cloned() else {
            return Ok(None);
        };
        let mut winner = None;
        for (head, source) in self.heads.iter_mut().zip(self.sources.iter_mut()) {
            if head.as_ref().is_some_and(|(k, _)| *k == key) {
                let (_, value) = head.take().expect("checked above");
                winner.get_or_insert(value);
                *head = source.next().await?;
            }
        }
        Ok(winner.map(|value| (key, value)))
    }
}

/// Answers a `ColumnScan` request on `writer`: `ColumnBatch` frames, then `ScanEnd`, or an
/// `Error` (`BadRequest` for a request that does not fit the table, `WaitLsnTimeout`,
/// `Internal`). An `Err` is a failure to write to the client.
pub async fn serve_column_scan<W: AsyncWrite + Unpin + Send>(
    timeline: &Timeline,
    request: &Request,
    wait_lsn_timeout: Duration,
    writer: &mut W,
) -> Result<()> {
    let Some(request) = ColumnScanRequest::from_wire(request) else {
        return write_response(
            writer,
            &error(ErrorKind::Internal, "not a column scan request".into()),
        )
        .await;
    };
    if request.table < FIRST_USER_TABLE_ID {
        let message = format!(
            "table {} is a system table: column scans read user tables only",
            request.table
        );
        return write_response(writer, &error(ErrorKind::BadRequest, message)).await;
    }
    if let Err(err) = timeline.wait_lsn(request.lsn, wait_lsn_timeout).await {
        return write_response(writer, &error_response(&err)).await;
    }
    let def = match timeline.table_def_at(request.table, request.lsn).await {
        Ok(Some(def)) => def,
        // No such table at the LSN: no rows.
        Ok(None) => return write_response(writer, &Response::ScanEnd).await,
        Err(err) => return write_response(writer, &error_response(&err)).await,
    };
    if let Err(reason) = request.check(&def) {
        return write_response(writer, &error(ErrorKind::BadRequest, reason)).await;
    }
    let mut sink = FrameSink {
        writer,
        encoder: None,
        write_failed: false,
    };
    match timeline.column_scan(&def, &request, &mut sink).await {
        Ok(stats) => {
            tracing::debug!(
                "timeline {}: column scan of table {} at LSN {}: {stats:?}",
                timeline.timeline_id,
                request.table,
                request.lsn
            );
            write_response(sink.writer, &Response::ScanEnd).await
        }
        Err(err) if sink.write_failed => Err(err),
        Err(err) => write_response(sink.writer, &error_response(&err)).await,
    }
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

fn error_response(err: &PageserverError) -> Response {
    let kind = match err {
        PageserverError::WaitLsnTimeout { .. } => ErrorKind::WaitLsnTimeout,
        _ => ErrorKind::Internal,
    };
    error(kind, err.to_string())
}

async fn write_response<W: AsyncWrite + Unpin>(writer: &mut W, response: &Response) -> Result<()> {
    wire::write_frame(writer, &response.encode()).await?;
    Ok(())
}

/// Writes batches as `ColumnBatch` frames of one Arrow IPC stream.
struct FrameSink<'w, W> {
    writer: &'w mut W,
    /// Made with the first batch, whose frame also carries the schema.
    encoder: Option<StreamEncoder>,
    /// A write to the client failed: the connection is no use any more.
    write_failed: bool,
}

impl<W: AsyncWrite + Unpin + Send> ColumnBatchSink for FrameSink<'_, W> {
    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        let mut frames = Vec::new();
        if self.encoder.is_none() {
            // The schema travels with an empty batch first, so that the encoder's state never
            // depends on a batch that turns out too large and is split.
            let mut encoder = StreamEncoder::try_new(&batch.schema())
                .map_err(|e| internal(format!("Arrow IPC encoder: {e}")))?;
            let buffers = encoder
                .encode(&RecordBatch::new_empty(batch.schema()))
                .map_err(|e| internal(format!("Arrow IPC schema: {e}")))?;
            frames.push(concat(&buffers));
            self.encoder = Some(encoder);
        }
        let encoder = self.encoder.as_mut().expect("made above");
        for part in split_for_frames(&batch) {
            encode_within_limit(encoder, &part, &mut frames)?;
        }
        // Small messages (the schema, small batches) share a frame, up to the limit.
        let mut frames = frames.into_iter();
        let mut first = frames.next().map(BytesMut::from).unwrap_or_default();
        let mut out = Vec::new();
        for frame in frames {
            if first.len() + frame.len() <= COLUMN_BATCH_IPC_BYTES_MAX {
                first.extend_from_slice(&frame);
            } else {
                out.push(std::mem::replace(&mut first, BytesMut::from(&frame[..])));
            }
        }
        if !first.is_empty() {
            out.push(first);
        }
        for ipc in out {
            let payload = Response::ColumnBatch { ipc: ipc.freeze() }.encode();
            if let Err(err) = wire::write_frame(self.writer, &payload).await {
                self.write_failed = true;
                return Err(err.into());
            }
        }
        Ok(())
    }
}

fn concat(buffers: &[arrow::buffer::Buffer]) -> Bytes {
    let mut out = BytesMut::with_capacity(buffers.iter().map(|b| b.len()).sum());
    for buffer in buffers {
        out.extend_from_slice(buffer.as_slice());
    }
    out.freeze()
}

/// `batch` cut by rows into parts whose data should encode well within a frame.
fn split_for_frames(batch: &RecordBatch) -> Vec<RecordBatch> {
    let n_bytes: usize = batch
        .columns()
        .iter()
        .map(|column| {
            column
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .sum();
    let target = COLUMN_BATCH_IPC_BYTES_MAX / 2;
    let n_parts = n_bytes.div_ceil(target).clamp(1, batch.num_rows().max(1));
    let rows_per_part = batch.num_rows().div_ceil(n_parts).max(1);
    (0..batch.num_rows())
        .step_by(rows_per_part)
        .map(|start| batch.slice(start, rows_per_part.min(batch.num_rows() - start)))
        .collect()
}

/// Encodes `batch` as IPC messages of at most [`COLUMN_BATCH_IPC_BYTES_MAX`] bytes each,
/// halving it by rows while it is too large.
fn encode_within_limit(
    encoder: &mut StreamEncoder,
    batch: &RecordBatch,
    frames: &mut Vec<Bytes>,
) -> Result<()> {
    let encoded = concat(
        &encoder
            .encode(batch)
            .map_err(|e| internal(format!("Arrow IPC batch: {e}")))?,
    );
    if encoded.len() <= COLUMN_BATCH_IPC_BYTES_MAX {
        frames.push(encoded);
        return Ok(());
    }
    if batch.num_rows() <= 1 {
        return Err(internal(format!(
            "one row takes {} bytes of Arrow IPC, more than a frame's {COLUMN_BATCH_IPC_BYTES_MAX}",
            encoded.len()
        )));
    }
    let half = batch.num_rows() / 2;
    encode_within_limit(encoder, &batch.slice(0, half), frames)?;
    encode_within_limit(encoder, &batch.slice(half, batch.num_rows() - half), frames)
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::buffer::Buffer;
    use arrow::ipc::reader::StreamDecoder;

    use super::*;

    /// Reads every frame `bytes` holds as responses.
    pub(crate) async fn responses(mut bytes: &[u8]) -> Vec<Response> {
        let mut out = Vec::new();
        while let Some(frame) = wire::read_frame(&mut bytes).await.unwrap() {
            out.push(Response::decode(&frame).unwrap());
        }
        out
    }

    /// The batches of the `ColumnBatch` frames, decoded as one Arrow IPC stream; checks each
    /// frame's size.
    pub(crate) fn decode_stream(responses: &[Response]) -> Vec<RecordBatch> {
        let mut decoder = StreamDecoder::new();
        let mut batches = Vec::new();
        for response in responses {
            let Response::ColumnBatch { ipc } = response else {
                continue;
            };
            assert!(!ipc.is_empty() && ipc.len() <= COLUMN_BATCH_IPC_BYTES_MAX);
            let mut buffer = Buffer::from(ipc.to_vec());
            while !buffer.is_empty() {
                if let Some(batch) = decoder.decode(&mut buffer).unwrap() {
                    batches.push(batch);
                }
            }
        }
        batches.retain(|batch| batch.num_rows() > 0);
        batches
    }

    fn batch(n_rows: usize, text_bytes: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new(KEY_COLUMN, DataType::Binary, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(
                (0..n_rows as i64).map(|i| (i % 7 != 0).then_some(i)),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n_rows).map(|i| format!("{i}{}", "x".repeat(text_bytes))),
            )),
            Arc::new(BinaryArray::from_iter_values(
                (0..n_rows as u32).map(|i| i.to_be_bytes()),
            )),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// Batches larger than a frame are split by rows; the frames' payloads are one IPC
    /// stream (the schema once, at the start) that decodes to the batches sent.
    #[tokio::test]
    async fn frames_are_one_ipc_stream_within_the_frame_limit() {
        let large = batch(300, 100_000);
        let small = batch(5, 3);
        let mut written: Vec<u8> = Vec::new();
        let mut sink = FrameSink {
            writer: &mut written,
            encoder: None,
            write_failed: false,
        };
        sink.send(small.clone()).await.unwrap();
        sink.send(large.clone()).await.unwrap();
        sink.send(small.clone()).await.unwrap();
        let responses = responses(&written).await;
        assert!(responses.len() >= 4, "{} frames", responses.len());
        let decoded = decode_stream(&responses);
        let decoded = arrow::compute::concat_batches(&small.schema(), &decoded).unwrap();
        let sent = arrow::compute::concat_batches(&small.schema(), &[small.clone(), large, small])
            .unwrap();
        assert_eq!(decoded, sent);

        // A single row larger than a frame is an error, not a frame too large to read.
        let huge = batch(1, COLUMN_BATCH_IPC_BYTES_MAX + 1);
        let mut written: Vec<u8> = Vec::new();
        let mut sink = FrameSink {
            writer: &mut written,
            encoder: None,
            write_failed: false,
        };
        let err = sink.send(huge).await.unwrap_err();
        assert!(err.to_string().contains("more than a frame"), "{err}");
        assert!(!sink.write_failed);
    }
}
