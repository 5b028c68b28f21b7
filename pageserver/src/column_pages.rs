//! Column pages: the second copy of an image layer's table, column by column, for scans that
//! read a few columns of many rows (the row pages of `image_layer` serve point lookups). One
//! table's rows as of the layer's LSN become one Parquet file, wrapped with page checksums.
//!
//! ```text
//! +------+------------------------+--------------+--------+------+-----------+---------+
//! | PAR1 | row groups (of pages)  | page indexes | footer | PAR1 | checksums | trailer |
//! +------+------------------------+--------------+--------+------+-----------+---------+
//!  <------------------ a plain Parquet file: parquet_len bytes ------------>
//!         <-- data: checked ----> <------ metadata, from metadata_offset on: ------------>
//!           page by page, on read                  checked once, on open
//!
//! schema:    the table's columns (`TableDef::arrow_schema`, PostgreSQL types in the field
//!            metadata), then `__omendb_key` (binary, not null): the row's storage key, last
//! rows:      sorted by key; row groups of `row_group_rows` (COLUMN_ROW_GROUP_ROWS) rows, data
//!            pages of at most `page_rows` (COLUMN_PAGE_ROWS_MAX) rows, LZ4_RAW, page
//!            statistics and both page indexes (column index, offset index), sorting column
//!            metadata naming the key
//! checksums: one (offset u64 | len u32 | crc32c u32) per page region, sorted by offset: the
//!            dictionary page of each column chunk (if any) and each data page
//! trailer:   parquet_len u64 | metadata_offset u64 | n_regions u64 | crc32c u32 (over the
//!            bytes from metadata_offset up to this field) | magic "OMENCOL1"
//! ```
//!
//! Integers of the checksums and trailer are big-endian. Parquet itself checks nothing (the
//! Rust writer leaves page CRCs out), and a flipped bit in a plain-encoded page is a wrong
//! value, not an error; so, like every other layer format here, a scan verifies the metadata
//! once on open and every page region before the Parquet decoder sees it. A damaged file is an
//! error ([`PageserverError::Corrupt`]), never a wrong row or a panic.
//!
//! # Scans and pushdown
//!
//! [`ColumnPages::open`] reads the tail of the file (one read when the metadata fits in
//! [`COLUMN_FOOTER_PREFETCH_BYTES`]). [`ColumnPages::scan`] (or [`scan`], both at once) then
//! reads only what it needs, through the Parquet push decoder (no I/O in the decoder; this
//! module fetches the ranges it asks for from a [`PageSource`]):
//!
//! - projection: only the column chunks of the requested columns, plus the key column;
//! - [`ColumnPredicate`]s (a conjunction of `column op literal`): a row group whose statistics
//!   (min, max, null count) show that no row can satisfy every predicate is not read; within
//!   the other row groups, the page index does the same per page, and the decoder fetches and
//!   decodes only the pages that may hold matches.
//!
//! Pruning only ever drops rows that cannot match: the result is every matching row and maybe
//! others (whole pages of them), so the caller filters again. A predicate the statistics
//! cannot decide soundly prunes nothing: a literal that does not convert exactly to the
//! column's type (`int_col < 2.5`), and comparisons on floating-point columns other than `=`,
//! because Parquet statistics leave NaN out while Arrow orders NaN (and -NaN) around every
//! number. A NULL never satisfies a comparison, so an all-NULL row group or page is skipped.
//!
//! Pure encoding and decoding over a [`PageSource`]; no I/O of its own.

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryBuilder, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use bytes::{BufMut, Bytes, BytesMut};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::push_decoder::ParquetPushDecoderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataPushDecoder, ParquetMetaDataReader,
    SortingColumn,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use parquet::DecodeResult;
use rowcodec::{BatchBuilder, TableDef, KEY_COLUMN};

use crate::error::{PageserverError, Result};
use crate::page_source::PageSource;

/// Rows per row group: the unit of row-group pruning, and of one read per projected column.
pub const COLUMN_ROW_GROUP_ROWS: usize = 64 * 1024;
/// Rows per data page at most: the unit of page-index pruning.
pub const COLUMN_PAGE_ROWS_MAX: usize = 8 * 1024;
/// Bytes read from the end of the file on open, so that the trailer, the checksums and the
/// Parquet metadata usually come in one read.
pub const COLUMN_FOOTER_PREFETCH_BYTES: u64 = 64 << 10;
/// The largest metadata (Parquet page indexes and footer, checksums) accepted on open.
pub const COLUMN_METADATA_BYTES_MAX: u64 = 64 << 20;
/// Rows per batch a scan returns at most (a larger request is cut to this).
pub const SCAN_BATCH_ROWS_MAX: usize = 64 * 1024;
/// The last 8 bytes of column pages.
pub const COLUMN_PAGES_MAGIC: [u8; 8] = *b"OMENCOL1";

/// Dictionary page size at which a column chunk falls back to plain encoding. Every read of
/// a dictionary-encoded page needs the chunk's dictionary too, so this bounds what a
/// one-page read costs beyond its page; low-cardinality columns stay well under it.
pub const COLUMN_DICTIONARY_BYTES_MAX: usize = 64 << 10;

/// Rows the Parquet writer takes at a time; its page row limit is checked between these.
const WRITE_BATCH_ROWS: usize = 1024;
/// Parquet's leading magic ("PAR1"): the data starts after it.
const PARQUET_MAGIC_BYTES: u64 = 4;
/// Parquet's footer: metadata length u32 and "PAR1".
const PARQUET_FOOTER_BYTES: u64 = 8;
const REGION_BYTES: u64 = 8 + 4 + 4;
/// The trailer's fields under its CRC: parquet_len, metadata_offset, n_regions.
const TRAILER_CHECKED_BYTES: u64 = 8 + 8 + 8;
/// The trailer bytes after the checked ones: the CRC itself and the magic.
const TRAILER_UNCHECKED_BYTES: u64 = 4 + 8;
const TRAILER_BYTES: u64 = TRAILER_CHECKED_BYTES + TRAILER_UNCHECKED_BYTES;

fn corrupt(reason: impl Into<String>) -> PageserverError {
    PageserverError::corrupt("column pages", reason)
}

/// How [`encode_with_options`] cuts rows into row groups and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub row_group_rows: usize,
    pub page_rows: usize,
}

impl Default for EncodeOptions {
    fn default() -> EncodeOptions {
        EncodeOptions {
            row_group_rows: COLUMN_ROW_GROUP_ROWS,
            page_rows: COLUMN_PAGE_ROWS_MAX,
        }
    }
}

/// The column pages of `table`'s `rows` (sorted by key, keys unique, values in the row format
/// of `rowcodec`), with the default row group and page sizes.
pub fn encode(table: &TableDef, rows: &[(Bytes, Bytes)]) -> Result<Bytes> {
    encode_with_options(table, rows, EncodeOptions::default())
}

/// [`encode`] with the given row group and page sizes (small ones make pruning testable).
pub fn encode_with_options(
    table: &TableDef,
    rows: &[(Bytes, Bytes)],
    options: EncodeOptions,
) -> Result<Bytes> {
    let internal = |what: &str| {
        PageserverError::Internal(format!(
            "column pages of table {} ({}): {what}",
            table.name, table.id
        ))
    };
    if options.row_group_rows == 0 || options.page_rows == 0 {
        return Err(internal("row groups and pages must hold at least one row"));
    }
    if let Some(i) = rows.windows(2).position(|w| w[0].0 >= w[1].0) {
        return Err(internal(&format!(
            "rows are not sorted and unique at row {}",
            i + 1
        )));
    }
    if table.columns.iter().any(|c| c.name == KEY_COLUMN) {
        return Err(internal(&format!("a column is named {KEY_COLUMN}")));
    }
    let key_column = table.columns.len();
    let schema = table.arrow_schema(true);
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_data_page_row_count_limit(options.page_rows)
        .set_write_batch_size(options.page_rows.min(WRITE_BATCH_ROWS))
        // LZ4_RAW: the cheapest decompression Parquet offers, in pure Rust (lz4_flex).
        .set_compression(Compression::LZ4_RAW)
        .set_dictionary_page_size_limit(COLUMN_DICTIONARY_BYTES_MAX)
        // Keys are unique: a dictionary of them would only add a page to every read.
        .set_column_dictionary_enabled(ColumnPath::from(KEY_COLUMN), false)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: key_column as i32,
            descending: false,
            nulls_first: false,
        }]))
        .build();
    let write_error = |e: ParquetError| internal(&format!("writing Parquet: {e}"));
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties)).map_err(write_error)?;
    let mut builder = BatchBuilder::new(&table.types(), table.arrow_schema(false));
    for chunk in rows.chunks(options.row_group_rows) {
        let key_bytes = chunk.iter().map(|(key, _)| key.len()).sum();
        let mut keys = BinaryBuilder::with_capacity(chunk.len(), key_bytes);
        for (key, value) in chunk {
            builder.append_row(value).map_err(|e| {
                PageserverError::corrupt(
                    format!(
                        "row {} of table {} ({})",
                        key_for_humans(key),
                        table.name,
                        table.id
                    ),
                    e.to_string(),
                )
            })?;
            keys.append_value(key);
        }
        let values = builder
            .finish()
            .map_err(|e| internal(&format!("building a batch: {e}")))?;
        let mut columns = values.columns().to_vec();
        columns.push(Arc::new(keys.finish()));
        let batch_options = RecordBatchOptions::new().with_row_count(Some(chunk.len()));
        let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &batch_options)
            .map_err(|e| internal(&format!("adding the key column: {e}")))?;
        writer.write(&batch).map_err(write_error)?;
        // End the row group here, whatever the writer's own size limits.
        writer.flush().map_err(write_error)?;
    }
    let parquet = Bytes::from(writer.into_inner().map_err(write_error)?);

    // Read the metadata back: it names the page regions to checksum, and checks the writer.
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(&parquet)
        .map_err(|e| internal(&format!("reading back the metadata: {e}")))?;
    let n_row_groups = rows.len().div_ceil(options.row_group_rows);
    if metadata.file_metadata().num_rows() != rows.len() as i64
        || metadata.num_row_groups() != n_row_groups
    {
        return Err(internal(&format!(
            "wrote {} rows in {} row groups, expected {} in {n_row_groups}",
            metadata.file_metadata().num_rows(),
            metadata.num_row_groups(),
            rows.len()
        )));
    }
    let regions = page_regions(&metadata, &parquet).map_err(|e| internal(&e))?;
    let metadata_offset = regions
        .last()
        .map_or(PARQUET_MAGIC_BYTES, |r| r.offset + u64::from(r.len));

    let mut out = BytesMut::with_capacity(
        parquet.len() + regions.len() * REGION_BYTES as usize + TRAILER_BYTES as usize,
    );
    out.put_slice(&parquet);
    for region in &regions {
        out.put_u64(region.offset);
        out.put_u32(region.len);
        out.put_u32(region.crc);
    }
    out.put_u64(parquet.len() as u64);
    out.put_u64(metadata_offset);
    out.put_u64(regions.len() as u64);
    let crc = crc32c::crc32c(&out[metadata_offset as usize..]);
    out.put_u32(crc);
    out.put_slice(&COLUMN_PAGES_MAGIC);
    Ok(out.freeze())
}

/// A run of bytes checked as a whole: one dictionary page or one data page (with its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    offset: u64,
    len: u32,
    crc: u32,
}

/// The dictionary and data page regions of every column chunk, in file order, checked to tile
/// each chunk exactly (which the checks on read rely on).
fn page_regions(metadata: &ParquetMetaData, parquet: &[u8]) -> Result<Vec<Region>, String> {
    let mut regions = Vec::new();
    for (rg, row_group) in metadata.row_groups().iter().enumerate() {
        for (column, chunk) in row_group.columns().iter().enumerate() {
            let pages = metadata
                .offset_index()
                .and_then(|index| index.get(rg))
                .and_then(|columns| columns.get(column))
                .map(|index| index.page_locations())
                .filter(|pages| !pages.is_empty())
                .ok_or_else(|| format!("no pages in the offset index of chunk {rg}/{column}"))?;
            let (chunk_start, chunk_len) = chunk.byte_range();
            // The dictionary page, if any, runs from the chunk's start to its first data page;
            // the data pages follow one another to the chunk's end.
            let first_page = pages[0].offset as u64;
            if first_page > chunk_start {
                regions.push((chunk_start, first_page));
            }
            let mut end = first_page;
            for page in pages {
                if page.offset as u64 != end || page.compressed_page_size <= 0 {
                    return Err(format!(
                        "the pages of chunk {rg}/{column} are not contiguous"
                    ));
                }
                end += page.compressed_page_size as u64;
                regions.push((page.offset as u64, end));
            }
            if first_page < chunk_start || end != chunk_start + chunk_len {
                return Err(format!("the pages of chunk {rg}/{column} do not fill it"));
            }
        }
    }
    let mut checked = Vec::with_capacity(regions.len());
    let mut previous_end = PARQUET_MAGIC_BYTES;
    for (start, end) in regions {
        let len = end
            .checked_sub(start)
            .and_then(|len| u32::try_from(len).ok())
            .filter(|len| *len > 0 && start >= previous_end && end <= parquet.len() as u64)
            .ok_or_else(|| format!("page region {start}..{end} is empty, misplaced or too big"))?;
        checked.push(Region {
            offset: start,
            len,
            crc: crc32c::crc32c(&parquet[start as usize..end as usize]),
        });
        previous_end = end;
    }
    Ok(checked)
}

/// A key in error messages: hex, cut after 32 bytes.
fn key_for_humans(key: &[u8]) -> String {
    let mut out: String = key.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if key.len() > 32 {
        out.push_str(&format!("...({} bytes)", key.len()));
    }
    out
}

/// The comparison and the constant side of a [`ColumnPredicate`] are the read protocol's. A
/// literal is compared with a column's values only where it converts exactly to the column's
/// type: an integer with integer, decimal and floating-point columns (if exactly
/// representable), a decimal with decimal and integer columns (after an exact rescale), a
/// float with floating-point columns (and smallint and integer columns when it is integral),
/// text with text, bytes with bytea and the key column, a date with date columns, a
/// timestamp with both timestamp types.
pub use pageserver_api::{CompareOp, Literal};

/// `column op literal`, where `column` indexes the file's schema: the table's columns in
/// order, then the key column (index `table.columns.len()`). The predicates of a scan are a
/// conjunction; a NULL satisfies none.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPredicate {
    pub column: usize,
    pub op: CompareOp,
    pub literal: Literal,
}

/// What a scan read and what pruning saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Row groups whose (projected) column chunks were read, in whole or in part.
    pub row_groups_read: usize,
    /// Row groups the predicates excluded, by their statistics or page by page.
    pub row_groups_skipped: usize,
    /// Rows returned.
    pub rows_read: u64,
    /// Rows of the row groups read that the page index excluded (neither fetched nor decoded).
    pub rows_skipped_by_pages: u64,
    /// Reads from the source, and their bytes (metadata included when the scan opened the file).
    pub n_reads: u64,
    pub bytes_read: u64,
}

/// The result of a scan: batches of the projected columns (in file order, the key last).
#[derive(Debug, Clone)]
pub struct ColumnScan {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub stats: ScanStats,
}

/// Opens the column pages in `source` and scans them: see [`ColumnPages::scan`].
pub async fn scan<S: PageSource>(
    source: &S,
    projection: Option<&[usize]>,
    predicates: &[ColumnPredicate],
    batch_rows: usize,
) -> Result<ColumnScan> {
    let mut reads = Reads::default();
    let pages = ColumnPages::open_counted(source, &mut reads).await?;
    let mut scan = pages
        .scan(source, projection, predicates, batch_rows)
        .await?;
    scan.stats.n_reads += reads.n_reads;
    scan.stats.bytes_read += reads.bytes_read;
    Ok(scan)
}

/// Reads from a [`PageSource`], counted.
#[derive(Debug, Default)]
struct Reads {
    n_reads: u64,
    bytes_read: u64,
}

impl Reads {
    async fn read<S: PageSource>(&mut self, source: &S, range: Range<u64>) -> Result<Bytes> {
        let n_bytes = range.end - range.start;
        let bytes = source.read(range.start, n_bytes).await?;
        if bytes.len() as u64 != n_bytes {
            return Err(corrupt(format!(
                "read {range:?} returned {} bytes",
                bytes.len()
            )));
        }
        self.n_reads += 1;
        self.bytes_read += n_bytes;
        Ok(bytes)
    }
}

/// An opened column-pages file: its checked metadata and page checksums, ready for scans of
/// the same source.
#[derive(Debug, Clone)]
pub struct ColumnPages {
    metadata: ArrowReaderMetadata,
    regions: Arc<[Region]>,
    /// Where the data (pages) ends and the metadata begins.
    metadata_offset: u64,
}

impl ColumnPages {
    /// Reads and checks the trailer, the checksums and the Parquet metadata (one read when
    /// they fit in [`COLUMN_FOOTER_PREFETCH_BYTES`], else two).
    pub async fn open<S: PageSource>(source: &S) -> Result<ColumnPages> {
        ColumnPages::open_counted(source, &mut Reads::default()).await
    }

    async fn open_counted<S: PageSource>(source: &S, reads: &mut Reads) -> Result<ColumnPages> {
        let file_len = source.len();
        let smallest = PARQUET_MAGIC_BYTES + PARQUET_FOOTER_BYTES + TRAILER_BYTES;
        if file_len < smallest {
            return Err(corrupt(format!("{file_len} bytes is too short")));
        }
        let tail_start = file_len.saturating_sub(COLUMN_FOOTER_PREFETCH_BYTES);
        let tail = reads.read(source, tail_start..file_len).await?;
        let trailer = &tail[tail.len() - TRAILER_BYTES as usize..];
        let be64 = |at: usize| u64::from_be_bytes(trailer[at..at + 8].try_into().expect("8"));
        if trailer[TRAILER_BYTES as usize - 8..] != COLUMN_PAGES_MAGIC {
            return Err(corrupt("bad magic (not column pages)"));
        }
        let (parquet_len, metadata_offset, n_regions) = (be64(0), be64(8), be64(16));
        let stored_crc = u32::from_be_bytes(trailer[24..28].try_into().expect("4"));
        let checksums_len = n_regions.checked_mul(REGION_BYTES);
        let fits = checksums_len
            .and_then(|len| len.checked_add(parquet_len))
            .and_then(|len| len.checked_add(TRAILER_BYTES))
            == Some(file_len)
            && metadata_offset >= PARQUET_MAGIC_BYTES
            && metadata_offset.saturating_add(PARQUET_FOOTER_BYTES) <= parquet_len
            && file_len - metadata_offset <= COLUMN_METADATA_BYTES_MAX;
        if !fits {
            return Err(corrupt("trailer offsets do not fit the file"));
        }
        let checked = if metadata_offset >= tail_start {
            tail.slice((metadata_offset - tail_start) as usize..)
        } else {
            let head = reads.read(source, metadata_offset..tail_start).await?;
            let mut both = BytesMut::with_capacity((file_len - metadata_offset) as usize);
            both.put_slice(&head);
            both.put_slice(&tail);
            both.freeze()
        };
        let crc_end = checked.len() - TRAILER_UNCHECKED_BYTES as usize;
        if crc32c::crc32c(&checked[..crc_end]) != stored_crc {
            return Err(corrupt("metadata checksum mismatch"));
        }
        let parquet_metadata = checked.slice(..(parquet_len - metadata_offset) as usize);
        let checksums = &checked[parquet_metadata.len()..crc_end - TRAILER_CHECKED_BYTES as usize];

        let mut regions = Vec::with_capacity(n_regions as usize);
        let mut previous_end = PARQUET_MAGIC_BYTES;
        for entry in checksums.chunks_exact(REGION_BYTES as usize) {
            let region = Region {
                offset: u64::from_be_bytes(entry[0..8].try_into().expect("8")),
                len: u32::from_be_bytes(entry[8..12].try_into().expect("4")),
                crc: u32::from_be_bytes(entry[12..16].try_into().expect("4")),
            };
            let end = region.offset.checked_add(u64::from(region.len));
            if region.len == 0
                || region.offset < previous_end
                || end.is_none_or(|end| end > metadata_offset)
            {
                return Err(corrupt(format!("misplaced page region {region:?}")));
            }
            previous_end = end.expect("checked");
            regions.push(region);
        }

        let mut decoder = ParquetMetaDataPushDecoder::try_new(parquet_len)
            .map_err(|e| corrupt(format!("metadata: {e}")))?
            .with_page_index_policy(PageIndexPolicy::Required);
        decoder
            .push_range(metadata_offset..parquet_len, parquet_metadata)
            .map_err(|e| corrupt(format!("metadata: {e}")))?;
        let metadata = match decoder.try_decode() {
            Ok(DecodeResult::Data(metadata)) => metadata,
            Ok(DecodeResult::NeedsData(ranges)) => {
                return Err(corrupt(format!(
                    "the metadata refers to bytes outside it: {ranges:?}"
                )))
            }
            Ok(DecodeResult::Finished) => return Err(corrupt("no metadata")),
            Err(e) => return Err(corrupt(format!("metadata: {e}"))),
        };
        let metadata = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
            .map_err(|e| corrupt(format!("schema: {e}")))?;
        let pages = ColumnPages {
            metadata,
            regions: regions.into(),
            metadata_offset,
        };
        pages.check_shape()?;
        Ok(pages)
    }

    /// The schema is flat and ends with the key column, and the page indexes have one entry
    /// per column chunk: what pruning and projection index by.
    fn check_shape(&self) -> Result<()> {
        let schema = self.metadata.schema();
        let parquet = self.metadata.metadata();
        let n_columns = schema.fields().len();
        let key_ok = schema
            .fields()
            .last()
            .is_some_and(|f| f.name() == KEY_COLUMN && *f.data_type() == DataType::Binary);
        if !key_ok || parquet.file_metadata().schema_descr().num_columns() != n_columns {
            return Err(corrupt(
                "the schema is not flat or does not end with the key",
            ));
        }
        let n_row_groups = parquet.num_row_groups();
        let shaped = |n_chunks: Option<Vec<usize>>| {
            n_chunks.is_some_and(|n| n.len() == n_row_groups && n.iter().all(|n| *n == n_columns))
        };
        let column_index = parquet
            .column_index()
            .map(|i| i.iter().map(Vec::len).collect());
        let offset_index = parquet
            .offset_index()
            .map(|i| i.iter().map(Vec::len).collect());
        if n_row_groups > 0 && !(shaped(column_index) && shaped(offset_index)) {
            return Err(corrupt("the page indexes do not cover every column chunk"));
        }
        Ok(())
    }

    /// The file's schema: the table's columns, then the key column.
    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    pub fn n_rows(&self) -> u64 {
        self.metadata.metadata().file_metadata().num_rows().max(0) as u64
    }

    pub fn n_row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    /// The rows of `source` (the file this was opened from) that may satisfy every predicate,
    /// in key order, as batches of at most `batch_rows` rows (1 to [`SCAN_BATCH_ROWS_MAX`]) of
    /// the `projection` columns (indexes into [`ColumnPages::schema`]; all when `None`) and
    /// the key column, in file order. Reads only the projected chunks of the row groups and
    /// pages the predicates cannot exclude (see the module docs).
    pub async fn scan<S: PageSource>(
        &self,
        source: &S,
        projection: Option<&[usize]>,
        predicates: &[ColumnPredicate],
        batch_rows: usize,
    ) -> Result<ColumnScan> {
        self.scan_row_groups(
            source,
            projection,
            predicates,
            batch_rows,
            0..self.n_row_groups(),
        )
        .await
    }

    /// [`ColumnPages::scan`] of the row groups in `row_groups` only (the others count
    /// neither as read nor as skipped): a caller that scans one row group at a time holds
    /// one row group's batches at most.
    pub async fn scan_row_groups<S: PageSource>(
        &self,
        source: &S,
        projection: Option<&[usize]>,
        predicates: &[ColumnPredicate],
        batch_rows: usize,
        row_groups: Range<usize>,
    ) -> Result<ColumnScan> {
        let row_groups =
            row_groups.start.min(self.n_row_groups())..row_groups.end.min(self.n_row_groups());
        let n_columns = self.schema().fields().len();
        let key_column = n_columns - 1;
        let mut columns: Vec<usize> = match projection {
            None => (0..n_columns).collect(),
            Some(projection) => projection.iter().copied().chain([key_column]).collect(),
        };
        columns.sort_unstable();
        columns.dedup();
        let out_of_range = columns
            .iter()
            .chain(predicates.iter().map(|p| &p.column))
            .find(|c| **c >= n_columns);
        if let Some(column) = out_of_range {
            return Err(PageserverError::Internal(format!(
                "column pages scan: column {column} of {n_columns}"
            )));
        }
        let schema = Arc::new(
            self.schema()
                .project(&columns)
                .map_err(|e| PageserverError::Internal(format!("projecting: {e}")))?,
        );
        let plan = self.plan(predicates, row_groups.clone());
        let mut stats = ScanStats {
            row_groups_read: plan.row_groups.len(),
            row_groups_skipped: row_groups.len() - plan.row_groups.len(),
            rows_skipped_by_pages: plan.rows_skipped_by_pages,
            ..ScanStats::default()
        };
        let mut batches = Vec::new();
        if plan.row_groups.is_empty() {
            return Ok(ColumnScan {
                schema,
                batches,
                stats,
            });
        }

        let mask = ProjectionMask::roots(self.metadata.parquet_schema(), columns.iter().copied());
        let mut builder = ParquetPushDecoderBuilder::new_with_metadata(self.metadata.clone())
            .with_projection(mask)
            .with_batch_size(batch_rows.clamp(1, SCAN_BATCH_ROWS_MAX))
            .with_row_groups(plan.row_groups);
        if let Some(selection) = plan.selection {
            builder = builder.with_row_selection(selection);
        }
        let mut decoder = builder
            .build()
            .map_err(|e| PageserverError::Internal(format!("column pages decoder: {e}")))?;
        let mut reads = Reads::default();
        loop {
            match decoder
                .try_decode()
                .map_err(|e| corrupt(format!("decoding: {e}")))?
            {
                DecodeResult::NeedsData(ranges) => {
                    // The decoder asks for each byte once; more than the data is a bug there.
                    if reads.bytes_read > self.metadata_offset {
                        return Err(PageserverError::Internal(
                            "the Parquet decoder keeps asking for data".into(),
                        ));
                    }
                    let data = self.read_checked(source, &ranges, &mut reads).await?;
                    decoder
                        .push_ranges(ranges, data)
                        .map_err(|e| corrupt(format!("decoding: {e}")))?;
                }
                DecodeResult::Data(batch) => {
                    if batch.schema().fields() != schema.fields() {
                        return Err(PageserverError::Internal(format!(
                            "decoded a batch of schema {:?}, expected {schema:?}",
                            batch.schema()
                        )));
                    }
                    stats.rows_read += batch.num_rows() as u64;
                    batches.push(batch);
                }
                DecodeResult::Finished => break,
            }
        }
        stats.n_reads = reads.n_reads;
        stats.bytes_read = reads.bytes_read;
        Ok(ColumnScan {
            schema,
            batches,
            stats,
        })
    }

    /// The bytes of `ranges`, each checked against the page checksums: overlapping and
    /// adjacent ranges are merged into one read, and every byte read must belong to a page
    /// region that the read holds whole.
    async fn read_checked<S: PageSource>(
        &self,
        source: &S,
        ranges: &[Range<u64>],
        reads: &mut Reads,
    ) -> Result<Vec<Bytes>> {
        if let Some(bad) = ranges
            .iter()
            .find(|r| r.start > r.end || r.end > self.metadata_offset)
        {
            return Err(corrupt(format!("the decoder asked for {bad:?}, not data")));
        }
        let mut sorted: Vec<Range<u64>> =
            ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        sorted.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
        for range in sorted {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        let mut buffers = Vec::with_capacity(merged.len());
        for range in &merged {
            let bytes = reads.read(source, range.clone()).await?;
            self.check_regions(range.start, &bytes)?;
            buffers.push(bytes);
        }
        Ok(ranges
            .iter()
            .map(|range| {
                if range.is_empty() {
                    return Bytes::new();
                }
                let i = merged.partition_point(|m| m.start <= range.start) - 1;
                let start = (range.start - merged[i].start) as usize;
                buffers[i].slice(start..start + (range.end - range.start) as usize)
            })
            .collect())
    }

    /// `bytes`, read from `offset`, are whole page regions with matching checksums.
    fn check_regions(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset + bytes.len() as u64;
        let mut at = offset;
        while at < end {
            let region = self
                .regions
                .binary_search_by_key(&at, |r| r.offset)
                .map(|i| self.regions[i])
                .map_err(|_| corrupt(format!("byte {at} does not start a checked page")))?;
            let region_end = at + u64::from(region.len);
            if region_end > end {
                return Err(corrupt(format!("a read ends inside the page at byte {at}")));
            }
            let page = &bytes[(at - offset) as usize..(region_end - offset) as usize];
            if crc32c::crc32c(page) != region.crc {
                return Err(corrupt(format!(
                    "checksum mismatch in the page at byte {at}"
                )));
            }
            at = region_end;
        }
        Ok(())
    }

    /// Which row groups, and which rows of them, may hold rows satisfying every predicate.
    fn plan(&self, predicates: &[ColumnPredicate], in_range: Range<usize>) -> ScanPlan {
        let metadata = self.metadata.metadata();
        let parquet_schema = self.metadata.parquet_schema();
        let row_groups = metadata.row_groups();
        let usable = usable_predicates(self.schema(), predicates);

        let mut keep: Vec<bool> = (0..row_groups.len())
            .map(|rg| in_range.contains(&rg))
            .collect();
        for pruning in &usable {
            let Ok(converter) = StatisticsConverter::from_column_index(
                pruning.column,
                pruning.field,
                parquet_schema,
            ) else {
                continue;
            };
            let (Ok(mins), Ok(maxes), Ok(null_counts)) = (
                converter.row_group_mins(row_groups.iter()),
                converter.row_group_maxes(row_groups.iter()),
                converter.row_group_null_counts(row_groups.iter()),
            ) else {
                continue;
            };
            for (rg, keep) in keep.iter_mut().enumerate() {
                let stats = Stats {
                    mins: mins.as_ref(),
                    maxes: maxes.as_ref(),
                    null_counts: &null_counts,
                    i: rg,
                    n_rows: row_groups[rg].num_rows().max(0) as u64,
                };
                *keep = *keep && pruning.may_match(&stats);
            }
        }

        let mut plan = ScanPlan::default();
        let mut selectors = Vec::new();
        for (rg, row_group) in row_groups.iter().enumerate() {
            if !keep[rg] {
                continue;
            }
            let n_rows = row_group.num_rows().max(0) as usize;
            let whole_row_group = 0..n_rows;
            let mut rows = vec![whole_row_group];
            for pruning in &usable {
                if let Some(pages) = self.page_ranges(rg, n_rows, pruning) {
                    rows = intersect(&rows, &pages);
                }
            }
            if rows.is_empty() {
                continue;
            }
            plan.row_groups.push(rg);
            let mut at = 0;
            for range in rows {
                if range.start > at {
                    selectors.push(RowSelector::skip(range.start - at));
                    plan.rows_skipped_by_pages += (range.start - at) as u64;
                }
                selectors.push(RowSelector::select(range.end - range.start));
                at = range.end;
            }
            if n_rows > at {
                selectors.push(RowSelector::skip(n_rows - at));
                plan.rows_skipped_by_pages += (n_rows - at) as u64;
            }
        }
        if plan.rows_skipped_by_pages > 0 {
            plan.selection = Some(RowSelection::from(selectors));
        }
        plan
    }

    /// The row ranges of row group `rg` whose pages of `pruning`'s column may match, or `None`
    /// when the page index cannot tell.
    fn page_ranges(
        &self,
        rg: usize,
        n_rows: usize,
        pruning: &Pruning,
    ) -> Option<Vec<Range<usize>>> {
        let metadata = self.metadata.metadata();
        let column_index = metadata.column_index()?;
        let offset_index = metadata.offset_index()?;
        let pages = offset_index.get(rg)?.get(pruning.column)?.page_locations();
        let n_pages = pages.len();
        let first_rows: Vec<usize> = pages
            .iter()
            .map(|p| usize::try_from(p.first_row_index).ok())
            .collect::<Option<_>>()?;
        let consistent = column_index.get(rg)?.get(pruning.column)?.num_pages() == n_pages as u64
            && first_rows.first() == Some(&0)
            && first_rows.windows(2).all(|w| w[0] < w[1])
            && first_rows.last().is_some_and(|last| *last < n_rows);
        if !consistent {
            return None;
        }
        let converter = StatisticsConverter::from_column_index(
            pruning.column,
            pruning.field,
            self.metadata.parquet_schema(),
        )
        .ok()?;
        let rgs = [rg];
        let mins = converter
            .data_page_mins(column_index, offset_index, &rgs)
            .ok()?;
        let maxes = converter
            .data_page_maxes(column_index, offset_index, &rgs)
            .ok()?;
        let null_counts = converter
            .data_page_null_counts(column_index, offset_index, &rgs)
            .ok()?;
        if mins.len() != n_pages || maxes.len() != n_pages || null_counts.len() != n_pages {
            return None;
        }
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for page in 0..n_pages {
            let start = first_rows[page];
            let end = first_rows.get(page + 1).copied().unwrap_or(n_rows);
            let stats = Stats {
                mins: mins.as_ref(),
                maxes: maxes.as_ref(),
                null_counts: &null_counts,
                i: page,
                n_rows: (end - start) as u64,
            };
            if !pruning.may_match(&stats) {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => ranges.push(start..end),
            }
        }
        Some(ranges)
    }
}

/// The predicates that values of `schema`'s columns can be soundly tested against.
fn usable_predicates<'a>(schema: &'a Schema, predicates: &[ColumnPredicate]) -> Vec<Pruning<'a>> {
    predicates
        .iter()
        .filter_map(|predicate| {
            let field: &Field = schema.fields().get(predicate.column)?;
            let target = Target::new(&predicate.literal, field.data_type())?;
            // Parquet statistics leave NaN out; Arrow orders NaN above (and -NaN below)
            // every number, so only equality with a number is decided by min and max.
            let float = matches!(field.data_type(), DataType::Float32 | DataType::Float64);
            if float && predicate.op != CompareOp::Eq {
                return None;
            }
            Some(Pruning {
                column: predicate.column,
                field,
                op: predicate.op,
                target,
            })
        })
        .collect()
}

/// Which rows of `batch` may satisfy every predicate (whose `column`s index the batch's
/// columns), by the rules pruning uses, applied to each row as a group of one: a row is
/// dropped only when its value provably fails a predicate, and a NULL fails every one. A
/// predicate that pruning could not use keeps every row, so the caller filters again.
pub fn may_match_rows(batch: &RecordBatch, predicates: &[ColumnPredicate]) -> Vec<bool> {
    let schema = batch.schema();
    let mut keep = vec![true; batch.num_rows()];
    for pruning in usable_predicates(&schema, predicates) {
        let values = batch.column(pruning.column).as_ref();
        let null_counts: arrow::array::UInt64Array = (0..values.len())
            .map(|row| Some(u64::from(values.is_null(row))))
            .collect();
        for (row, keep) in keep.iter_mut().enumerate() {
            if *keep {
                let stats = Stats {
                    mins: values,
                    maxes: values,
                    null_counts: &null_counts,
                    i: row,
                    n_rows: 1,
                };
                *keep = pruning.may_match(&stats);
            }
        }
    }
    keep
}

#[derive(Debug, Default)]
struct ScanPlan {
    row_groups: Vec<usize>,
    selection: Option<RowSelection>,
    rows_skipped_by_pages: u64,
}

/// The rows in both sorted, disjoint range lists.
fn intersect(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start < end {
            out.push(start..end);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// A predicate that statistics can decide: its literal converted to the column's type.
struct Pruning<'a> {
    column: usize,
    field: &'a Field,
    op: CompareOp,
    target: Target,
}

/// The statistics of row group or page `i`.
struct Stats<'a> {
    mins: &'a dyn Array,
    maxes: &'a dyn Array,
    null_counts: &'a arrow::array::UInt64Array,
    i: usize,
    n_rows: u64,
}

impl Pruning<'_> {
    /// Whether a row group or page with these statistics may hold a row with
    /// `value op target`. Unknown statistics may.
    fn may_match(&self, stats: &Stats) -> bool {
        let i = stats.i;
        if i < stats.null_counts.len()
            && stats.null_counts.is_valid(i)
            && stats.null_counts.value(i) >= stats.n_rows
        {
            // Only NULLs (a missing count reads as 0, which proves nothing).
            return false;
        }
        let min = self.target.compare(stats.mins, i);
        let max = self.target.compare(stats.maxes, i);
        use Ordering::{Equal, Greater, Less};
        match self.op {
            CompareOp::Eq => min != Some(Greater) && max != Some(Less),
            CompareOp::Lt => !matches!(min, Some(Greater | Equal)),
            CompareOp::LtEq => min != Some(Greater),
            CompareOp::Gt => !matches!(max, Some(Less | Equal)),
            CompareOp::GtEq => max != Some(Less),
        }
    }
}

/// A literal as a value of the column's domain, compared with statistics exactly.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// Integers, dates, timestamps, booleans (0, 1), and decimals at the column's scale.
    Int(i128),
    Float(f64),
    /// Text (UTF-8 bytes) and binary, compared byte-wise like Arrow and Parquet do.
    Bytes(Vec<u8>),
}

impl Target {
    /// The literal in the domain of a column of `data_type`, or `None` when it does not
    /// convert exactly (then the predicate prunes nothing).
    fn new(literal: &Literal, data_type: &DataType) -> Option<Target> {
        use DataType as D;
        use Literal as L;
        /// Integers up to 2^53 are exact in an f64.
        const EXACT_F64_INT: u64 = 1 << 53;
        Some(match (literal, data_type) {
            (L::Int(i), D::Int16 | D::Int32 | D::Int64) => Target::Int(i128::from(*i)),
            (L::Int(i), D::Decimal128(_, scale)) => {
                Target::Int(rescale(i128::from(*i), 0, *scale)?)
            }
            (L::Int(i), D::Float64) if i.unsigned_abs() <= EXACT_F64_INT => {
                Target::Float(*i as f64)
            }
            (L::Int(i), D::Float32) if i.unsigned_abs() <= 1 << 24 => Target::Float(*i as f64),
            (L::Decimal { value, scale }, D::Decimal128(_, column_scale)) => {
                Target::Int(rescale(*value, *scale, *column_scale)?)
            }
            (L::Decimal { value, scale }, D::Int16 | D::Int32 | D::Int64) => {
                Target::Int(rescale(*value, *scale, 0)?)
            }
            (L::Float(f), D::Float64) if !f.is_nan() => Target::Float(*f),
            // Compared as f32 by whoever filters, so only literals that are exact f32 values.
            (L::Float(f), D::Float32) if !f.is_nan() && f64::from(*f as f32) == *f => {
                Target::Float(*f)
            }
            // Not bigint: a filter may compare it as f64, where 2^53 + 1 equals 2^53.
            (L::Float(f), D::Int16 | D::Int32) if f.fract() == 0.0 && f.abs() < 2.2e9 => {
                Target::Int(*f as i128)
            }
            (L::Bool(b), D::Boolean) => Target::Int(i128::from(*b)),
            (L::Text(s), D::Utf8) => Target::Bytes(s.as_bytes().to_vec()),
            (L::Bytes(b), D::Binary) => Target::Bytes(b.clone()),
            (L::Date(d), D::Date32) => Target::Int(i128::from(*d)),
            (L::Timestamp(t), D::Timestamp(TimeUnit::Microsecond, _)) => {
                Target::Int(i128::from(*t))
            }
            _ => return None,
        })
    }

    /// How statistic `i` of `stats` compares with this target; `None` when unknown (no
    /// statistic, NaN, or an unexpected array type).
    fn compare(&self, stats: &dyn Array, i: usize) -> Option<Ordering> {
        if i >= stats.len() || stats.is_null(i) {
            return None;
        }
        match self {
            Target::Int(target) => {
                let value: i128 = match stats.data_type() {
                    DataType::Int16 => stats.as_primitive_opt::<Int16Type>()?.value(i).into(),
                    DataType::Int32 => stats.as_primitive_opt::<Int32Type>()?.value(i).into(),
                    DataType::Int64 => stats.as_primitive_opt::<Int64Type>()?.value(i).into(),
                    DataType::Date32 => stats.as_primitive_opt::<Date32Type>()?.value(i).into(),
                    DataType::Timestamp(TimeUnit::Microsecond, _) => stats
                        .as_primitive_opt::<TimestampMicrosecondType>()?
                        .value(i)
                        .into(),
                    DataType::Decimal128(..) => {
                        stats.as_primitive_opt::<Decimal128Type>()?.value(i)
                    }
                    DataType::Boolean => stats.as_boolean_opt()?.value(i).into(),
                    _ => return None,
                };
                Some(value.cmp(target))
            }
            Target::Float(target) => {
                let value: f64 = match stats.data_type() {
                    DataType::Float32 => stats.as_primitive_opt::<Float32Type>()?.value(i).into(),
                    DataType::Float64 => stats.as_primitive_opt::<Float64Type>()?.value(i),
                    _ => return None,
                };
                // IEEE comparison: -0 = 0, as for PostgreSQL; NaN is unknown.
                value.partial_cmp(target)
            }
            Target::Bytes(target) => {
                let value: &[u8] = match stats.data_type() {
                    DataType::Utf8 => stats.as_string_opt::<i32>()?.value(i).as_bytes(),
                    DataType::Binary => stats.as_binary_opt::<i32>()?.value(i),
                    _ => return None,
                };
                Some(value.cmp(target.as_slice()))
            }
        }
    }
}

/// `value` at scale `from` as the same number at scale `to`, if exact.
fn rescale(value: i128, from: i8, to: i8) -> Option<i128> {
    let shift = i32::from(to) - i32::from(from);
    let factor = 10i128.checked_pow(shift.unsigned_abs())?;
    if shift >= 0 {
        value.checked_mul(factor)
    } else if value % factor == 0 {
        Some(value / factor)
    } else {
        None
    }
}

#[cfg(test)]
#[path = "column_pages_tests.rs"]
mod tests;
