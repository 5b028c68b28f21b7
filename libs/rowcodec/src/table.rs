//! Table definitions as the catalog stores them, and the catalog's reserved table ids. The
//! catalog lives in reserved tables of the same WAL and pageserver as the data, so a fresh
//! compute (or a branch, or the pageserver's compaction) sees the schema at its LSN:
//!
//! - table [`CATALOG_TABLE_ID`]: key = table name (UTF-8), value = versioned JSON [`TableDef`];
//! - table [`META_TABLE_ID`]: key `next_table_id`, value = u32 big-endian;
//! - table [`COMMIT_TIMES_TABLE_ID`]: written by the pageserver as it applies WAL, never by a
//!   compute: key = commit time (µs since the Unix epoch, u64 big-endian), value = that
//!   commit's LSN (u64 big-endian); it finds "the last commit at or before time T".
//!
//! Table ids are never reused: a dropped table's rows stay invisible for ever. Pure.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ColumnType;

pub const CATALOG_TABLE_ID: u32 = 1;
pub const META_TABLE_ID: u32 = 2;
pub const COMMIT_TIMES_TABLE_ID: u32 = 3;
/// The first id handed to a user table; lower ids are reserved for the system.
pub const FIRST_USER_TABLE_ID: u32 = 16;
pub const NEXT_TABLE_ID_KEY: &[u8] = b"next_table_id";
/// Version byte in front of each stored table definition.
const TABLE_DEF_VERSION: u8 = 1;
/// The hidden column that carries a row's storage key: into compute's UPDATE and DELETE
/// plans, and as the last column of the pageserver's column pages.
pub const KEY_COLUMN: &str = "__omendb_key";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub column_type: ColumnType,
    pub not_null: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub id: u32,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns`; empty for a table without a primary key, whose rows are
    /// keyed by a hidden row id.
    pub primary_key: Vec<usize>,
}

impl TableDef {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn types(&self) -> Vec<ColumnType> {
        self.columns.iter().map(|c| c.column_type.clone()).collect()
    }

    /// The Arrow schema of the table's rows, optionally followed by the key column.
    ///
    /// Every field is nullable: NOT NULL is enforced by OmenDB's write path with PostgreSQL's
    /// error, not by DataFusion's planner with its own.
    pub fn arrow_schema(&self, with_key: bool) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| c.column_type.arrow_field(&c.name, true))
            .collect();
        if with_key {
            fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
        }
        Arc::new(Schema::new(fields))
    }

    pub fn encode(&self) -> Bytes {
        let mut out = vec![TABLE_DEF_VERSION];
        serde_json::to_writer(&mut out, self).expect("a table definition serializes");
        Bytes::from(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<TableDef, String> {
        match bytes.split_first() {
            Some((&TABLE_DEF_VERSION, json)) => {
                serde_json::from_slice(json).map_err(|e| format!("corrupt table definition: {e}"))
            }
            Some((version, _)) => Err(format!("unsupported table definition version {version}")),
            None => Err("empty table definition".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_def_round_trip_and_corruption() {
        let def = TableDef {
            id: 16,
            name: "t".into(),
            columns: vec![ColumnDef {
                name: "id".into(),
                column_type: ColumnType::Int,
                not_null: true,
            }],
            primary_key: vec![0],
        };
        assert_eq!(TableDef::decode(&def.encode()).unwrap(), def);
        assert!(TableDef::decode(&[]).is_err());
        assert!(TableDef::decode(&[9, b'{']).is_err());
        assert!(TableDef::decode(&def.encode()[..5]).is_err());
    }
}
