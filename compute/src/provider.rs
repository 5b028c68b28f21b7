//! The DataFusion `TableProvider` for OmenDB tables, and the rule that picks how a scan
//! reads the pageserver.
//!
//! ```text
//!  filters pushed by DataFusion (all Inexact: DataFusion applies them again above the scan)
//!    │
//!    ├─ every primary-key column pinned by `col = literal`, `col IN (literals)` or an OR of
//!    │  such equalities, at most POINT_LOOKUP_KEYS_MAX keys ──▶ GetRow per key (row pages)
//!    ├─ otherwise ──▶ ColumnScan (column pages merged with newer changes at the pageserver)
//!    │                with the projection and the `column op literal` predicates
//!    └─ `SET omendb.read_path = 'rows'`: lookups as above, other scans by the row Scan;
//!       `'columns'`: every scan by ColumnScan; `'auto'` (default): the rule above
//! ```
//!
//! Every path reads at the transaction's snapshot LSN and merges the transaction's own
//! uncommitted writes (its overlay): a stored row whose key the transaction wrote is replaced
//! by the transaction's version (or dropped, if deleted), and rows the transaction inserted
//! follow. With `with_key`, each batch also carries the row's storage key in the hidden
//! [`KEY_COLUMN`](crate::catalog::KEY_COLUMN), which UPDATE and DELETE use to find the rows
//! they change (a column scan gets it from the column pages' key column).
//!
//! Because every filter is reported Inexact, a path may return more rows than match (pages
//! the pageserver could not prune, overlay rows) but never fewer: the answers of all paths
//! are the same. EXPLAIN shows the path (`OmenScanExec: … read=get_row|row_scan|column_scan`)
//! and EXPLAIN ANALYZE the requests it made.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use datafusion::scalar::ScalarValue;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use ids::Lsn;
use pageserver_api::{ColumnPredicate, CompareOp, Literal};

use crate::catalog::TableDef;
use crate::engine::pageserver_error;
use crate::pageserver_client::{PageserverClient, PageserverError};
use crate::rowcodec::{encode_key, BatchBuilder, ColumnType};

/// The most keys a scan reads by point lookups; a scan whose filters pin more goes to a
/// column scan.
pub const POINT_LOOKUP_KEYS_MAX: usize = 256;
/// Point lookups of one scan in flight at once.
pub const POINT_LOOKUP_CONCURRENCY: usize = 8;
/// Rows per batch a column scan asks the pageserver for.
pub const COLUMN_SCAN_BATCH_ROWS: u32 = 8192;

/// The session setting that forces a read path.
pub const READ_PATH_SETTING: &str = "omendb.read_path";

/// How scans read the pageserver (`SET omendb.read_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPath {
    /// Primary-key lookups by GetRow, every other scan by ColumnScan.
    #[default]
    Auto,
    /// Primary-key lookups by GetRow, every other scan by the row Scan.
    Rows,
    /// Every scan by ColumnScan.
    Columns,
}

impl ReadPath {
    /// The setting's values, as `SET` accepts them (case-insensitive).
    pub const NAMES: [&'static str; 3] = ["auto", "rows", "columns"];

    pub fn parse(text: &str) -> Option<ReadPath> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(ReadPath::Auto),
            "rows" => Some(ReadPath::Rows),
            "columns" => Some(ReadPath::Columns),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReadPath::Auto => "auto",
            ReadPath::Rows => "rows",
            ReadPath::Columns => "columns",
        }
    }
}

/// A table as one statement of one transaction sees it.
#[derive(Clone)]
pub struct OmenTable {
    client: PageserverClient,
    table: Arc<TableDef>,
    lsn: Lsn,
    /// The transaction's writes to the table, sorted by key; `None` is a deletion.
    overlay: Arc<Vec<(Bytes, Option<Bytes>)>>,
    /// The table's columns, then the key column when the statement needs it.
    schema: SchemaRef,
    read_path: ReadPath,
}

impl std::fmt::Debug for OmenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OmenTable({} at {})", self.table.name, self.lsn)
    }
}

impl OmenTable {
    pub fn new(
        client: PageserverClient,
        table: Arc<TableDef>,
        lsn: Lsn,
        overlay: Vec<(Bytes, Option<Bytes>)>,
        with_key: bool,
        read_path: ReadPath,
    ) -> OmenTable {
        let schema = table.arrow_schema(with_key);
        OmenTable {
            client,
            table,
            lsn,
            overlay: Arc::new(overlay),
            schema,
            read_path,
        }
    }

    /// The table column `expr` names, if it is a bare column of this table.
    fn column_of(&self, expr: &Expr) -> Option<usize> {
        match expr {
            Expr::Column(column) => self.table.column_index(&column.name),
            _ => None,
        }
    }

    /// The values `filter` allows column `column` to take, when it is `column = literal`,
    /// `column IN (literals)` or an OR of those; NULLs left out (they equal nothing).
    fn pinned_values(&self, filter: &Expr, column: usize) -> Option<Vec<ScalarValue>> {
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                let value = match (left.as_ref(), right.as_ref()) {
                    (side, Expr::Literal(value, _)) | (Expr::Literal(value, _), side)
                        if self.column_of(side) == Some(column) =>
                    {
                        value
                    }
                    _ => return None,
                };
                Some(if value.is_null() {
                    vec![]
                } else {
                    vec![value.clone()]
                })
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                let mut values = self.pinned_values(left, column)?;
                values.extend(self.pinned_values(right, column)?);
                Some(values)
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) if self.column_of(expr) == Some(column) => list
                .iter()
                .filter(|item| !matches!(item, Expr::Literal(value, _) if value.is_null()))
                .map(|item| match item {
                    Expr::Literal(value, _) => Some(value.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The storage keys of the rows `filters` allow, when they pin every primary-key column
    /// to at most [`POINT_LOOKUP_KEYS_MAX`] key tuples: sorted, each once.
    fn point_lookup_keys(&self, filters: &[Expr]) -> Option<Vec<Bytes>> {
        let primary_key = &self.table.primary_key;
        if primary_key.is_empty() {
            return None;
        }
        let mut per_column: Vec<Vec<ScalarValue>> = Vec::with_capacity(primary_key.len());
        for &column in primary_key {
            let target = self.table.columns[column].column_type.arrow_type();
            let values = filters
                .iter()
                .filter_map(|filter| self.pinned_values(filter, column))
                .min_by_key(Vec::len)?;
            // A key holds each value in its column's type: only exact conversions pin a key.
            let values = values
                .iter()
                .map(|value| cast_exactly(value, &target))
                .collect::<Option<Vec<ScalarValue>>>()?;
            per_column.push(values);
        }
        let n_keys = per_column
            .iter()
            .try_fold(1usize, |n, values| n.checked_mul(values.len()))?;
        if n_keys > POINT_LOOKUP_KEYS_MAX {
            return None;
        }
        let mut keys = Vec::with_capacity(n_keys);
        let mut tuple = vec![0usize; per_column.len()];
        if n_keys > 0 {
            loop {
                let values: Vec<ScalarValue> = tuple
                    .iter()
                    .zip(&per_column)
                    .map(|(i, values)| values[*i].clone())
                    .collect();
                let mut key = Vec::new();
                encode_key(&values, &mut key).ok()?;
                keys.push(Bytes::from(key));
                // The next tuple, odometer style.
                let Some(at) = (0..tuple.len())
                    .rev()
                    .find(|at| tuple[*at] + 1 < per_column[*at].len())
                else {
                    break;
                };
                tuple[at] += 1;
                tuple[at + 1..].iter_mut().for_each(|i| *i = 0);
            }
        }
        keys.sort();
        keys.dedup();
        Some(keys)
    }

    /// `filter` as column-scan predicates, when it is `column op literal` (either way round)
    /// or `column IN (literals)` (as `column >= min AND column <= max`).
    fn predicates(&self, filter: &Expr) -> Vec<ColumnPredicate> {
        let predicate = |column: usize, op: CompareOp, value: &ScalarValue| {
            Some(ColumnPredicate {
                column: u32::try_from(column).ok()?,
                op,
                literal: literal(value)?,
            })
        };
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let Some(op) = compare_op(*op) else {
                    return vec![];
                };
                let found = match (left.as_ref(), right.as_ref()) {
                    (side, Expr::Literal(value, _)) => {
                        self.column_of(side).map(|column| (column, op, value))
                    }
                    (Expr::Literal(value, _), side) => self
                        .column_of(side)
                        .map(|column| (column, op.flipped(), value)),
                    _ => None,
                };
                found
                    .and_then(|(column, op, value)| predicate(column, op, value))
                    .into_iter()
                    .collect()
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) => {
                let Some(column) = self.column_of(expr) else {
                    return vec![];
                };
                let values: Option<Vec<&ScalarValue>> = list
                    .iter()
                    .map(|item| match item {
                        Expr::Literal(value, _) if !value.is_null() => Some(value),
                        _ => None,
                    })
                    .collect();
                let Some(values) = values else {
                    return vec![];
                };
                let mut range: Option<(&ScalarValue, &ScalarValue)> = None;
                for value in values {
                    range = match range {
                        None => Some((value, value)),
                        Some((min, max)) => {
                            let (Some(below), Some(above)) =
                                (value.partial_cmp(min), value.partial_cmp(max))
                            else {
                                return vec![];
                            };
                            Some((
                                if below.is_lt() { value } else { min },
                                if above.is_gt() { value } else { max },
                            ))
                        }
                    };
                }
                let Some((min, max)) = range else {
                    return vec![];
                };
                [
                    predicate(column, CompareOp::GtEq, min),
                    predicate(column, CompareOp::LtEq, max),
                ]
                .into_iter()
                .flatten()
                .collect()
            }
            _ => vec![],
        }
    }

    /// Whether the planner rule can use `filter` at all.
    fn can_use(&self, filter: &Expr) -> bool {
        !self.predicates(filter).is_empty()
            || self
                .table
                .primary_key
                .iter()
                .any(|column| self.pinned_values(filter, *column).is_some())
    }
}

/// `value` in `target`'s type when the conversion loses nothing (it converts back to the
/// same value); `None` otherwise.
fn cast_exactly(value: &ScalarValue, target: &DataType) -> Option<ScalarValue> {
    if value.data_type() == *target {
        return Some(value.clone());
    }
    let cast = value.cast_to(target).ok()?;
    let back = cast.cast_to(&value.data_type()).ok()?;
    (back == *value && !cast.is_null()).then_some(cast)
}

fn compare_op(op: Operator) -> Option<CompareOp> {
    Some(match op {
        Operator::Eq => CompareOp::Eq,
        Operator::Lt => CompareOp::Lt,
        Operator::LtEq => CompareOp::LtEq,
        Operator::Gt => CompareOp::Gt,
        Operator::GtEq => CompareOp::GtEq,
        _ => return None,
    })
}

/// A literal in the column-scan protocol's form; `None` for NULL and for what the protocol
/// cannot carry exactly.
fn literal(value: &ScalarValue) -> Option<Literal> {
    use ScalarValue as S;
    Some(match value {
        S::Int8(Some(v)) => Literal::Int(i64::from(*v)),
        S::Int16(Some(v)) => Literal::Int(i64::from(*v)),
        S::Int32(Some(v)) => Literal::Int(i64::from(*v)),
        S::Int64(Some(v)) => Literal::Int(*v),
        S::UInt8(Some(v)) => Literal::Int(i64::from(*v)),
        S::UInt16(Some(v)) => Literal::Int(i64::from(*v)),
        S::UInt32(Some(v)) => Literal::Int(i64::from(*v)),
        S::UInt64(Some(v)) => Literal::Int(i64::try_from(*v).ok()?),
        S::Float32(Some(v)) => Literal::Float(f64::from(*v)),
        S::Float64(Some(v)) => Literal::Float(*v),
        S::Decimal128(Some(v), _, scale) => Literal::Decimal {
            value: *v,
            scale: *scale,
        },
        S::Boolean(Some(v)) => Literal::Bool(*v),
        S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v))
            if v.len() <= pageserver_api::COLUMN_SCAN_LITERAL_BYTES_MAX =>
        {
            Literal::Text(v.clone())
        }
        S::Binary(Some(v)) | S::LargeBinary(Some(v)) | S::BinaryView(Some(v))
            if v.len() <= pageserver_api::COLUMN_SCAN_LITERAL_BYTES_MAX =>
        {
            Literal::Bytes(v.clone())
        }
        S::Date32(Some(v)) => Literal::Date(*v),
        S::TimestampMicrosecond(Some(v), _) => Literal::Timestamp(*v),
        S::TimestampSecond(Some(v), _) => Literal::Timestamp(v.checked_mul(1_000_000)?),
        S::TimestampMillisecond(Some(v), _) => Literal::Timestamp(v.checked_mul(1_000)?),
        S::TimestampNanosecond(Some(v), _) if v % 1_000 == 0 => Literal::Timestamp(v / 1_000),
        _ => return None,
    })
}

#[async_trait]
impl TableProvider for OmenTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match self.can_use(filter) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let keys = match self.read_path {
            ReadPath::Columns => None,
            ReadPath::Auto | ReadPath::Rows => self.point_lookup_keys(filters),
        };
        let access = match (keys, self.read_path) {
            (Some(keys), _) => Access::GetRow(Arc::new(keys)),
            (None, ReadPath::Rows) => Access::RowScan,
            (None, ReadPath::Auto | ReadPath::Columns) => {
                let n_columns = self.table.columns.len();
                let columns = match projection {
                    Some(projection) => projection
                        .iter()
                        .filter(|c| **c < n_columns)
                        .map(|c| *c as u32)
                        .collect(),
                    None => (0..n_columns as u32).collect(),
                };
                let mut predicates: Vec<ColumnPredicate> =
                    filters.iter().flat_map(|f| self.predicates(f)).collect();
                predicates.truncate(pageserver_api::COLUMN_SCAN_PREDICATES_MAX);
                Access::ColumnScan {
                    columns,
                    predicates,
                }
            }
        };
        Ok(Arc::new(OmenScanExec::new(
            self.clone(),
            projection.cloned(),
            access,
            limit,
        )?))
    }
}

/// How one scan reads the pageserver.
#[derive(Debug, Clone)]
enum Access {
    /// One GetRow per key (sorted, each once).
    GetRow(Arc<Vec<Bytes>>),
    /// The row Scan of the whole table.
    RowScan,
    /// A ColumnScan of these table columns with these predicates.
    ColumnScan {
        columns: Vec<u32>,
        predicates: Vec<ColumnPredicate>,
    },
}

/// The scan of an [`OmenTable`]: one partition, read the way [`Access`] says.
#[derive(Debug)]
pub struct OmenScanExec {
    table: OmenTable,
    /// Indices into the table's schema (with the key column when `with_key`).
    projection: Option<Vec<usize>>,
    projected_schema: SchemaRef,
    access: Access,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl OmenScanExec {
    fn new(
        table: OmenTable,
        projection: Option<Vec<usize>>,
        access: Access,
        limit: Option<usize>,
    ) -> Result<OmenScanExec> {
        let projected_schema = match &projection {
            Some(projection) => Arc::new(table.schema.project(projection)?),
            None => table.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected_schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(OmenScanExec {
            table,
            projection,
            projected_schema,
            access,
            limit,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The name EXPLAIN shows for the access path.
    pub fn read_name(&self) -> &'static str {
        match self.access {
            Access::GetRow(_) => "get_row",
            Access::RowScan => "row_scan",
            Access::ColumnScan { .. } => "column_scan",
        }
    }
}

impl DisplayAs for OmenScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "OmenScanExec: table={}, read={}",
            self.table.table.name,
            self.read_name()
        )?;
        if matches!(t, DisplayFormatType::TreeRender) {
            return Ok(());
        }
        match &self.access {
            Access::GetRow(keys) => write!(f, ", keys={}", keys.len())?,
            Access::RowScan => {}
            Access::ColumnScan {
                columns,
                predicates,
            } => {
                let names = |c: &u32| {
                    self.table
                        .table
                        .columns
                        .get(*c as usize)
                        .map_or("?", |c| c.name.as_str())
                };
                let columns: Vec<&str> = columns.iter().map(names).collect();
                write!(f, ", columns=[{}]", columns.join(", "))?;
                if !predicates.is_empty() {
                    let shown: Vec<String> = predicates
                        .iter()
                        .map(|p| format!("{} {:?} {:?}", names(&p.column), p.op, p.literal))
                        .collect();
                    write!(f, ", predicates=[{}]", shown.join(", "))?;
                }
            }
        }
        if !self.table.overlay.is_empty() {
            write!(f, ", own_writes={}", self.table.overlay.len())?;
        }
        if let Some(limit) = self.limit {
            write!(f, ", fetch={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for OmenScanExec {
    fn name(&self) -> &str {
        "OmenScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "OmenScanExec has no children to replace".into(),
            ))
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn fetch(&self) -> Option<usize> {
        self.limit
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "OmenScanExec has one partition, not {partition}"
            )));
        }
        let table = &self.table;
        let n_columns = table.table.columns.len();
        let decoder = Arc::new(Decoder {
            types: table.table.types(),
            row_schema: table.table.arrow_schema(false),
            schema: table.table.arrow_schema(true),
        });
        let requests = MetricBuilder::new(&self.metrics)
            .global_counter(format!("{}_requests", self.read_name()));
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        // The output's columns as indices of the table's columns, `n_columns` for the key.
        let output_columns: Arc<Vec<usize>> = Arc::new(match &self.projection {
            Some(projection) => projection.clone(),
            None => (0..table.schema.fields().len()).collect(),
        });
        let schema = self.projected_schema.clone();
        // Decoded rows (every table column, then the key) cut to the output.
        let project = {
            let output_columns = output_columns.clone();
            let schema = schema.clone();
            move |batch: RecordBatch| rebatch(&schema, batch.project(&output_columns)?)
        };
        let overlay = table.overlay.clone();
        let stored: BoxStream<'static, Result<RecordBatch>> = match &self.access {
            Access::GetRow(keys) => {
                let client = table.client.clone();
                let (table_id, lsn) = (table.table.id, table.lsn);
                let keys = keys.clone();
                let overlay = overlay.clone();
                let decoder = decoder.clone();
                let project = project.clone();
                futures::stream::once(async move {
                    // A key the transaction wrote is read from its overlay, the others from
                    // the row pages at the snapshot.
                    let mut rows: Vec<(Bytes, Bytes)> = Vec::with_capacity(keys.len());
                    let mut from_storage = Vec::new();
                    for key in keys.iter() {
                        match overlay.binary_search_by(|(k, _)| k.cmp(key)) {
                            Ok(at) => {
                                rows.extend(overlay[at].1.clone().map(|value| (key.clone(), value)))
                            }
                            Err(_) => from_storage.push(key.clone()),
                        }
                    }
                    requests.add(from_storage.len());
                    let fetched: Vec<Option<(Bytes, Bytes)>> = futures::stream::iter(from_storage)
                        .map(|key| {
                            let client = client.clone();
                            async move {
                                let value = client.get_row(table_id, key.clone(), lsn).await?;
                                Ok::<_, PageserverError>(value.map(|value| (key, value)))
                            }
                        })
                        .buffered(POINT_LOOKUP_CONCURRENCY)
                        .try_collect()
                        .await
                        .map_err(storage_error)?;
                    rows.extend(fetched.into_iter().flatten());
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    let rows: Vec<(&Bytes, &Bytes)> = rows.iter().map(|(k, v)| (k, v)).collect();
                    project(decoder.build(&rows)?)
                })
                .boxed()
            }
            Access::RowScan => {
                requests.add(1);
                let rx = table.client.scan(table.table.id, table.lsn);
                let overlay = overlay.clone();
                let decoder = decoder.clone();
                let project = project.clone();
                receiver_stream(rx)
                    .map(move |batch| {
                        let rows = batch.map_err(storage_error)?;
                        // Rows this transaction changed come from the overlay instead.
                        let visible: Vec<(&Bytes, &Bytes)> = rows
                            .iter()
                            .filter(|(key, _)| !in_overlay(&overlay, key))
                            .map(|(k, v)| (k, v))
                            .collect();
                        project(decoder.build(&visible)?)
                    })
                    .boxed()
            }
            Access::ColumnScan {
                columns,
                predicates,
            } => {
                requests.add(1);
                let rx = table.client.column_scan(
                    table.table.id,
                    table.lsn,
                    columns.clone(),
                    predicates.clone(),
                    COLUMN_SCAN_BATCH_ROWS,
                );
                // The pageserver answers with the columns in table order, then the key.
                let mut read = columns.clone();
                read.sort_unstable();
                read.dedup();
                let mut expected: Vec<DataType> = read
                    .iter()
                    .map(|c| table.table.columns[*c as usize].column_type.arrow_type())
                    .collect();
                expected.push(DataType::Binary);
                let positions: Vec<usize> = output_columns
                    .iter()
                    .map(|c| match *c < n_columns {
                        true => read.binary_search(&(*c as u32)).map_err(|_| {
                            DataFusionError::Internal(format!(
                                "column {c} is in the projection but not read"
                            ))
                        }),
                        false => Ok(read.len()),
                    })
                    .collect::<Result<_>>()?;
                let overlay = overlay.clone();
                let schema = schema.clone();
                receiver_stream(rx)
                    .map(move |batch| {
                        let batch = batch.map_err(storage_error)?;
                        check_types(&batch, &expected)?;
                        // Rows this transaction changed come from the overlay instead.
                        let keys = key_column(&batch)?;
                        let keep: BooleanArray = (0..keys.len())
                            .map(|row| Some(!in_overlay(&overlay, keys.value(row))))
                            .collect();
                        let batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
                        rebatch(&schema, batch.project(&positions)?)
                    })
                    .boxed()
            }
        };
        // The transaction's own rows (inserted or changed) follow; a lookup took the
        // overlay's versions of its keys already.
        let own = {
            let overlay = overlay.clone();
            let lookup = matches!(self.access, Access::GetRow(_));
            futures::stream::once(async move {
                let rows: Vec<(&Bytes, &Bytes)> = match lookup {
                    true => Vec::new(),
                    false => overlay
                        .iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                        .collect(),
                };
                project(decoder.build(&rows)?)
            })
            .boxed()
        };
        let limit = self.limit.unwrap_or(usize::MAX);
        let stream = stored
            .chain(own)
            .try_filter(|batch| futures::future::ready(batch.num_rows() > 0))
            // Stops reading once `limit` rows are out.
            .scan(0usize, move |emitted, batch| {
                if *emitted >= limit {
                    return futures::future::ready(None);
                }
                let batch = batch.map(|batch| {
                    let take = batch.num_rows().min(limit - *emitted);
                    *emitted += take;
                    output_rows.add(take);
                    batch.slice(0, take)
                });
                futures::future::ready(Some(batch))
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The items of a channel as a stream.
fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// `batch`'s columns under `schema` (same types; the names and metadata are the schema's).
fn rebatch(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        batch.columns().to_vec(),
        &options,
    )?)
}

/// A column scan's batch has the types asked for (a timestamp's time zone name aside).
fn check_types(batch: &RecordBatch, expected: &[DataType]) -> Result<()> {
    let types: Vec<&DataType> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.data_type())
        .collect();
    let same = |have: &DataType, want: &DataType| match (have, want) {
        (
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)),
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)),
        ) => true,
        _ => have == want,
    };
    if types.len() == expected.len() && types.iter().zip(expected).all(|(h, w)| same(h, w)) {
        return Ok(());
    }
    Err(storage_error(PageserverError::Remote {
        kind: pageserver_api::ErrorKind::Internal,
        message: format!("a column scan answered with types {types:?}, not {expected:?}"),
    }))
}

fn storage_error(e: PageserverError) -> DataFusionError {
    DataFusionError::External(Box::new(pageserver_error(e)))
}

fn in_overlay(overlay: &[(Bytes, Option<Bytes>)], key: &[u8]) -> bool {
    overlay
        .binary_search_by(|(k, _)| k.as_ref().cmp(key))
        .is_ok()
}

/// The last column of a batch: the storage key.
fn key_column(batch: &RecordBatch) -> Result<&BinaryArray> {
    batch
        .columns()
        .last()
        .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| DataFusionError::Internal("a batch without its key column".into()))
}

/// Builds record batches of every table column then the key from encoded rows.
struct Decoder {
    types: Vec<ColumnType>,
    row_schema: SchemaRef,
    schema: SchemaRef,
}

impl Decoder {
    fn build(&self, rows: &[(&Bytes, &Bytes)]) -> Result<RecordBatch> {
        let codec = |e: crate::rowcodec::CodecError| {
            DataFusionError::External(Box::new(crate::error::SqlError::internal(e)))
        };
        let mut builder = BatchBuilder::new(&self.types, self.row_schema.clone());
        for (_, value) in rows {
            builder.append_row(value).map_err(codec)?;
        }
        let batch = builder.finish().map_err(codec)?;
        let mut keys = BinaryBuilder::with_capacity(rows.len(), rows.len() * 16);
        for (key, _) in rows {
            keys.append_value(key);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(keys.finish()));
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use datafusion::prelude::{col, lit};
    use ids::TimelineId;

    use super::*;
    use crate::catalog::ColumnDef;

    fn table(primary_key: Vec<usize>) -> OmenTable {
        let column = |name: &str, column_type| ColumnDef {
            name: name.into(),
            column_type,
            not_null: false,
        };
        let def = TableDef {
            id: 16,
            name: "t".into(),
            columns: vec![
                column("a", ColumnType::Int),
                column("b", ColumnType::Text),
                column("c", ColumnType::Double),
            ],
            primary_key,
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        OmenTable::new(
            PageserverClient::new(addr, TimelineId::from_u128(1)),
            Arc::new(def),
            Lsn(1),
            vec![],
            false,
            ReadPath::Auto,
        )
    }

    fn key(values: &[ScalarValue]) -> Bytes {
        let mut out = Vec::new();
        encode_key(values, &mut out).unwrap();
        Bytes::from(out)
    }

    #[test]
    fn lookups_need_every_key_column_pinned() {
        let t = table(vec![0, 1]);
        let a1 = col("a").eq(lit(1i32));
        let b_in = col("b").in_list(vec![lit("y"), lit("x"), lit("y")], false);
        let keys = t.point_lookup_keys(&[a1.clone(), b_in.clone()]).unwrap();
        let expected = vec![
            key(&[ScalarValue::Int32(Some(1)), ScalarValue::from("x")]),
            key(&[ScalarValue::Int32(Some(1)), ScalarValue::from("y")]),
        ];
        assert_eq!(keys, expected);
        // Literal on the left, ORs of equalities, a wider literal type that converts exactly.
        let or = lit("x").eq(col("b")).or(col("b").eq(lit("y")));
        let a_wide = col("a").eq(lit(1i64));
        assert_eq!(t.point_lookup_keys(&[a_wide, or]).unwrap(), expected);
        // One key column unpinned, a range, a lossy literal, a negated list: no lookup.
        assert!(t.point_lookup_keys(std::slice::from_ref(&a1)).is_none());
        assert!(t
            .point_lookup_keys(&[a1.clone(), col("b").gt(lit("x"))])
            .is_none());
        assert!(t
            .point_lookup_keys(&[col("a").eq(lit(1i64 << 40)), b_in.clone()])
            .is_none());
        assert!(t
            .point_lookup_keys(&[a1.clone(), col("b").in_list(vec![lit("x")], true)])
            .is_none());
        // NULL equals nothing: no keys at all.
        let null = col("b").eq(lit(ScalarValue::Utf8(None)));
        assert_eq!(
            t.point_lookup_keys(&[a1.clone(), null]).unwrap(),
            Vec::<Bytes>::new()
        );
        // Too many keys.
        let many: Vec<Expr> = (0..POINT_LOOKUP_KEYS_MAX as i32 + 1).map(lit).collect();
        let many = col("a").in_list(many, false);
        assert!(t.point_lookup_keys(&[many, b_in]).is_none());
        // A table without a primary key is never looked up.
        assert!(table(vec![])
            .point_lookup_keys(&[col("a").eq(lit(1i32))])
            .is_none());
    }

    #[test]
    fn comparisons_with_literals_become_predicates() {
        let t = table(vec![0]);
        let predicates = |filter: Expr| t.predicates(&filter);
        assert_eq!(
            predicates(lit(5i32).lt(col("a"))),
            vec![ColumnPredicate {
                column: 0,
                op: CompareOp::Gt,
                literal: Literal::Int(5),
            }]
        );
        assert_eq!(
            predicates(col("b").in_list(vec![lit("q"), lit("c"), lit("k")], false)),
            vec![
                ColumnPredicate {
                    column: 1,
                    op: CompareOp::GtEq,
                    literal: Literal::Text("c".into()),
                },
                ColumnPredicate {
                    column: 1,
                    op: CompareOp::LtEq,
                    literal: Literal::Text("q".into()),
                },
            ]
        );
        assert!(predicates(col("a").not_eq(lit(5i32))).is_empty());
        assert!(predicates(col("a").eq(col("c"))).is_empty());
        assert!(predicates(col("a").eq(lit(ScalarValue::Int32(None)))).is_empty());
        assert!(predicates((col("a") + lit(1i32)).gt(lit(5i32))).is_empty());
        assert!(t.can_use(&col("c").lt_eq(lit(2.5f64))));
        assert!(!t.can_use(&col("b").like(lit("x%"))));
        assert_eq!(ReadPath::parse(" Columns "), Some(ReadPath::Columns));
        assert_eq!(ReadPath::parse("fast"), None);
        for name in ReadPath::NAMES {
            assert_eq!(ReadPath::parse(name).unwrap().name(), name);
        }
    }
}
