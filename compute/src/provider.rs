//! The DataFusion `TableProvider` for OmenDB tables.
//!
//! A scan streams row batches from the pageserver at the transaction's snapshot LSN,
//! decodes them into Arrow record batches, and merges the transaction's own uncommitted
//! writes (its overlay): a stored row whose key the transaction wrote is replaced by the
//! transaction's version (or dropped, if deleted), and rows the transaction inserted follow.
//!
//! With `with_key`, each batch also carries the row's storage key in the hidden
//! [`KEY_COLUMN`], which UPDATE and DELETE use to find the rows they change.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, BinaryBuilder};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;
use ids::Lsn;

use crate::catalog::TableDef;
use crate::engine::pageserver_error;
use crate::pageserver_client::PageserverClient;
use crate::rowcodec::{BatchBuilder, ColumnType};

/// A table as one statement of one transaction sees it.
#[derive(Clone)]
pub struct OmenTable {
    client: PageserverClient,
    table: Arc<TableDef>,
    lsn: Lsn,
    overlay: Arc<Vec<(Bytes, Option<Bytes>)>>,
    with_key: bool,
    schema: SchemaRef,
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
    ) -> OmenTable {
        let schema = table.arrow_schema(with_key);
        OmenTable {
            client,
            table,
            lsn,
            overlay: Arc::new(overlay),
            with_key,
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for OmenTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition: Arc<dyn PartitionStream> = Arc::new(self.clone());
        let streaming = StreamingTable::try_new(self.schema.clone(), vec![partition])?;
        streaming.scan(state, projection, filters, limit).await
    }
}

/// Builds record batches from encoded rows, with the key column when asked for.
struct Decoder {
    types: Vec<ColumnType>,
    row_schema: SchemaRef,
    schema: SchemaRef,
    with_key: bool,
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
        if !self.with_key {
            return Ok(batch);
        }
        let mut keys = BinaryBuilder::with_capacity(rows.len(), rows.len() * 16);
        for (key, _) in rows {
            keys.append_value(key);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(keys.finish()));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl PartitionStream for OmenTable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let decoder = Arc::new(Decoder {
            types: self.table.types(),
            row_schema: self.table.arrow_schema(false),
            schema: self.schema.clone(),
            with_key: self.with_key,
        });
        let overlay = self.overlay.clone();
        let rx = self.client.scan(self.table.id, self.lsn);
        let stored = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let stored = {
            let decoder = decoder.clone();
            let overlay = overlay.clone();
            stored.map(move |batch| {
                let rows =
                    batch.map_err(|e| DataFusionError::External(Box::new(pageserver_error(e))))?;
                // Rows this transaction changed come from the overlay instead.
                let visible: Vec<(&Bytes, &Bytes)> = rows
                    .iter()
                    .filter(|(key, _)| overlay.binary_search_by(|(k, _)| k.cmp(key)).is_err())
                    .map(|(k, v)| (k, v))
                    .collect();
                decoder.build(&visible)
            })
        };
        let own = futures::stream::once(async move {
            let rows: Vec<(&Bytes, &Bytes)> = overlay
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
            decoder.build(&rows)
        });
        let stream = stored.chain(own).filter(|batch| {
            let keep = !matches!(batch, Ok(b) if b.num_rows() == 0);
            async move { keep }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
