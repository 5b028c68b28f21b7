//! The catalog: table definitions, stored as rows of reserved tables in the same WAL and
//! pageserver as the data, so a fresh compute (or a branch) sees the schema at its LSN.
//!
//! - table [`CATALOG_TABLE_ID`]: key = table name (UTF-8), value = versioned JSON [`TableDef`];
//! - table [`META_TABLE_ID`]: key `next_table_id`, value = u32 big-endian.
//!
//! Table ids are never reused: a dropped table's rows stay invisible for ever. The definitions
//! and ids live in the `rowcodec` crate (the pageserver reads them too); this module adds the
//! set of tables a transaction sees.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use ::rowcodec::{
    ColumnDef, TableDef, CATALOG_TABLE_ID, FIRST_USER_TABLE_ID, KEY_COLUMN, META_TABLE_ID,
    NEXT_TABLE_ID_KEY,
};

/// The set of tables visible to a transaction.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: BTreeMap<String, Arc<TableDef>>,
    pub next_table_id: u32,
}

impl Catalog {
    pub fn empty() -> Catalog {
        Catalog {
            tables: BTreeMap::new(),
            next_table_id: FIRST_USER_TABLE_ID,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(name)
    }
}
