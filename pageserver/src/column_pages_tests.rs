//! Tests of [`super`]: round trips against the row decoder, projection, pruning that never
//! loses a matching row, read counts, and damaged files.

use super::*;
use crate::page_source::MemorySource;
use crate::test_util::{block_on, Rng};
use arrow::array::{ArrayRef, BinaryArray};
use arrow::compute::concat_batches;
use rowcodec::{encode_values, ColumnDef, ColumnType, Value};

/// An owned row value, as the tests generate them.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    Dec(i128, i8),
    Date(i32),
    Ts(i64),
    TsTz(i64),
}

impl Cell {
    fn value(&self) -> Value<'_> {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(*b),
            Cell::I16(i) => Value::Int16(*i),
            Cell::I32(i) => Value::Int32(*i),
            Cell::I64(i) => Value::Int64(*i),
            Cell::F32(f) => Value::Float32(*f),
            Cell::F64(f) => Value::Float64(*f),
            Cell::Text(s) => Value::Text(s),
            Cell::Bytes(b) => Value::Bytes(b),
            Cell::Dec(v, scale) => Value::Decimal(*v, *scale),
            Cell::Date(d) => Value::Date(*d),
            Cell::Ts(t) => Value::Timestamp(*t),
            Cell::TsTz(t) => Value::TimestampTz(*t),
        }
    }
}

fn column(name: &str, column_type: ColumnType) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        column_type,
        not_null: false,
    }
}

fn table(columns: Vec<ColumnDef>) -> TableDef {
    TableDef {
        id: 16,
        name: "t".into(),
        columns,
        primary_key: vec![0],
    }
}

/// The storage key of a bigint primary key: table id, then the sign-flipped big-endian
/// value (the order-preserving encoding of `rowcodec::encode_key`).
fn key_of(id: i64) -> Bytes {
    let mut key = 16u32.to_be_bytes().to_vec();
    key.extend_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
    Bytes::from(key)
}

fn encode_rows(rows: &[(i64, Vec<Cell>)]) -> Vec<(Bytes, Bytes)> {
    rows.iter()
        .map(|(id, cells)| {
            let values: Vec<Value> = cells.iter().map(Cell::value).collect();
            let mut row = Vec::new();
            encode_values(&values, &mut row).unwrap();
            (key_of(*id), Bytes::from(row))
        })
        .collect()
}

#[rustfmt::skip]
fn all_types() -> Vec<ColumnType> {
    use ColumnType::*;
    vec![SmallInt, Int, BigInt, Double, Real, Text, Varchar(Some(20)), Bool,
         Numeric { precision: 10, scale: 2 }, Numeric { precision: 38, scale: 10 }, Date,
         Timestamp, TimestampTz, Bytea]
}

fn random_cell(rng: &mut Rng, column_type: &ColumnType) -> Cell {
    if rng.below(5) == 0 {
        return Cell::Null;
    }
    let wide = rng.next_u64() as i64;
    match column_type {
        ColumnType::SmallInt => Cell::I16(wide as i16),
        ColumnType::Int => Cell::I32(rng.below(100) as i32 - 50),
        ColumnType::BigInt => Cell::I64(wide),
        ColumnType::Double => Cell::F64(match rng.below(8) {
            0 => f64::NAN,
            1 => -0.0,
            _ => wide as f64 / 1e6,
        }),
        ColumnType::Real => Cell::F32(rng.below(1000) as f32 / 8.0),
        ColumnType::Text | ColumnType::Varchar(_) => {
            let len = rng.below(12) as usize;
            Cell::Text(
                (0..len)
                    .map(|_| ['a', 'é', '\0', 'z'][rng.below(4) as usize])
                    .collect(),
            )
        }
        ColumnType::Bool => Cell::Bool(rng.below(2) == 1),
        ColumnType::Numeric { precision, scale } => {
            let limit = 10i128.pow(u32::from(*precision)) - 1;
            Cell::Dec((i128::from(wide) * 1_000_003) % limit, *scale)
        }
        ColumnType::Date => Cell::Date(rng.below(40_000) as i32 - 20_000),
        ColumnType::Timestamp => Cell::Ts(wide / 1000),
        ColumnType::TimestampTz => Cell::TsTz(wide / 1000),
        ColumnType::Bytea => Cell::Bytes((0..rng.below(6)).map(|_| rng.next_u64() as u8).collect()),
    }
}

/// A table of a bigint key column `id` and 1 to 6 random columns, with `n_rows` rows of
/// increasing ids; some rows are shorter (written before an ADD COLUMN).
fn random_table(rng: &mut Rng, n_rows: usize) -> (TableDef, Vec<(Bytes, Bytes)>) {
    let types = all_types();
    let mut columns = vec![ColumnDef {
        not_null: true,
        ..column("id", ColumnType::BigInt)
    }];
    for i in 0..1 + rng.below(6) {
        let column_type = types[rng.below(types.len() as u64) as usize].clone();
        columns.push(column(&format!("c{i}"), column_type));
    }
    let def = table(columns);
    let mut id = rng.next_u64() as i64 / 4;
    let rows: Vec<(i64, Vec<Cell>)> = (0..n_rows)
        .map(|_| {
            id += 1 + rng.below(3) as i64;
            let n_values = if rng.below(10) == 0 {
                1 + rng.below(def.columns.len() as u64) as usize
            } else {
                def.columns.len()
            };
            let mut cells = vec![Cell::I64(id)];
            for c in &def.columns[1..n_values] {
                cells.push(random_cell(rng, &c.column_type));
            }
            (id, cells)
        })
        .collect();
    let encoded = encode_rows(&rows);
    (def, encoded)
}

/// What the row decoder makes of `rows`, with the key column added.
fn expected_batch(def: &TableDef, rows: &[(Bytes, Bytes)]) -> RecordBatch {
    let mut builder = BatchBuilder::new(&def.types(), def.arrow_schema(false));
    for (_, value) in rows {
        builder.append_row(value).unwrap();
    }
    let mut columns = builder.finish().unwrap().columns().to_vec();
    let keys = BinaryArray::from_iter_values(rows.iter().map(|(key, _)| key));
    columns.push(Arc::new(keys) as ArrayRef);
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(def.arrow_schema(true), columns, &options).unwrap()
}

fn all_rows(scan: &ColumnScan) -> RecordBatch {
    concat_batches(&scan.schema, &scan.batches).unwrap()
}

/// Random tables of every column type, with NULLs, NaN, -0, empty strings and short
/// rows, at many row group, page and batch sizes: the scan returns exactly what the row
/// decoder makes of the rows, schema (with PostgreSQL types) included.
#[test]
fn random_tables_round_trip_as_the_row_decoder_reads_them() {
    block_on(async {
        for seed in 0..16u64 {
            let mut rng = Rng::new(seed);
            let n_rows = [0, 1, 9, 64, 300][seed as usize % 5];
            let (def, rows) = random_table(&mut rng, n_rows);
            let options = EncodeOptions {
                row_group_rows: [1, 7, 64, 100_000][rng.below(4) as usize],
                page_rows: [1, 3, 16, 1_000][rng.below(4) as usize],
            };
            let batch_rows = [1, 5, 1_000][rng.below(3) as usize];
            let source = MemorySource::new(encode_with_options(&def, &rows, options).unwrap());
            let scanned = scan(&source, None, &[], batch_rows).await.unwrap();
            assert_eq!(scanned.schema, def.arrow_schema(true), "seed {seed}");
            assert_eq!(
                all_rows(&scanned),
                expected_batch(&def, &rows),
                "seed {seed}"
            );
            assert!(scanned.batches.iter().all(|b| b.num_rows() <= batch_rows));
            let n_row_groups = n_rows.div_ceil(options.row_group_rows);
            assert_eq!(
                (
                    scanned.stats.row_groups_read,
                    scanned.stats.row_groups_skipped
                ),
                (n_row_groups, 0)
            );
            assert_eq!(scanned.stats.rows_read, n_rows as u64);
            assert_eq!(scanned.stats.n_reads, source.n_reads());
        }
    });
}

#[test]
fn default_sizes_empty_tables_and_tables_without_columns() {
    block_on(async {
        let (def, rows) = random_table(&mut Rng::new(7), 1_000);
        let source = MemorySource::new(encode(&def, &rows).unwrap());
        let pages = ColumnPages::open(&source).await.unwrap();
        assert_eq!((pages.n_rows(), pages.n_row_groups()), (1_000, 1));
        let scanned = pages.scan(&source, None, &[], 4_096).await.unwrap();
        assert_eq!(all_rows(&scanned), expected_batch(&def, &rows));

        let source = MemorySource::new(encode(&def, &[]).unwrap());
        let scanned = scan(&source, None, &[], 10).await.unwrap();
        assert_eq!(
            (scanned.schema.clone(), scanned.batches.len()),
            (def.arrow_schema(true), 0)
        );

        let no_columns = TableDef {
            columns: vec![],
            primary_key: vec![],
            ..def
        };
        let rows: Vec<(Bytes, Bytes)> = (0..5)
            .map(|i| (key_of(i), Bytes::from_static(&[1, 0])))
            .collect();
        let source = MemorySource::new(encode(&no_columns, &rows).unwrap());
        let scanned = scan(&source, None, &[], 10).await.unwrap();
        assert_eq!(all_rows(&scanned), expected_batch(&no_columns, &rows));
    });
}

#[test]
fn projection_returns_the_requested_columns_and_the_key() {
    block_on(async {
        let mut rng = Rng::new(3);
        let (def, rows) = loop {
            let (def, rows) = random_table(&mut rng, 200);
            if def.columns.len() >= 4 {
                break (def, rows);
            }
        };
        let options = EncodeOptions {
            row_group_rows: 64,
            page_rows: 8,
        };
        let source = MemorySource::new(encode_with_options(&def, &rows, options).unwrap());
        let full = expected_batch(&def, &rows);
        let key = def.columns.len();
        for (projection, columns) in [
            (vec![3, 1], vec![1, 3, key]),
            (vec![1, 1, key], vec![1, key]),
            (vec![], vec![key]),
            ((0..key).collect(), (0..=key).collect()),
        ] {
            let scanned = scan(&source, Some(&projection), &[], 50).await.unwrap();
            assert_eq!(
                all_rows(&scanned),
                full.project(&columns).unwrap(),
                "{projection:?}"
            );
        }
        for bad in [vec![key + 1], vec![99]] {
            let result = scan(&source, Some(&bad), &[], 50).await;
            assert!(
                matches!(result, Err(PageserverError::Internal(_))),
                "{bad:?}"
            );
        }
        let bad_predicate = ColumnPredicate {
            column: key + 1,
            op: CompareOp::Eq,
            literal: Literal::Int(1),
        };
        let result = scan(&source, None, &[bad_predicate], 50).await;
        assert!(matches!(result, Err(PageserverError::Internal(_))));
    });
}

/// One row of the pruning table.
#[derive(Debug)]
struct PruneRow {
    id: i64,
    name: String,
    maybe: Option<i64>,
    f: f64,
    scrambled: i32,
}

const TS_BASE: i64 = 1_700_000_000_000_000;

/// 1000 rows with ids 0, 2, …, 1998 (row groups of 100 rows, pages of 10), and columns
/// that follow the key order (`amount` = id as numeric(12,2), `ts`, `name`, `f`), one
/// NULL in its first half (`maybe`) and one that does not (`scrambled`).
fn prune_table() -> (TableDef, Vec<PruneRow>, Vec<(Bytes, Bytes)>) {
    let def = table(vec![
        column("id", ColumnType::BigInt),
        column(
            "amount",
            ColumnType::Numeric {
                precision: 12,
                scale: 2,
            },
        ),
        column("ts", ColumnType::Timestamp),
        column("name", ColumnType::Text),
        column("maybe", ColumnType::BigInt),
        column("f", ColumnType::Double),
        column("scrambled", ColumnType::Int),
    ]);
    let rows: Vec<PruneRow> = (0..1000)
        .map(|i| PruneRow {
            id: 2 * i,
            name: format!("name{:05}", 2 * i),
            maybe: (i >= 500).then_some(2 * i),
            f: (2 * i) as f64,
            scrambled: ((i * 7919) % 1000) as i32,
        })
        .collect();
    let cells: Vec<(i64, Vec<Cell>)> = rows
        .iter()
        .map(|r| {
            let cells = vec![
                Cell::I64(r.id),
                Cell::Dec(i128::from(r.id) * 100, 2),
                Cell::Ts(TS_BASE + r.id * 1_000_000),
                Cell::Text(r.name.clone()),
                r.maybe.map_or(Cell::Null, Cell::I64),
                Cell::F64(r.f),
                Cell::I32(r.scrambled),
            ];
            (r.id, cells)
        })
        .collect();
    let encoded = encode_rows(&cells);
    (def, rows, encoded)
}

fn predicate(column: usize, op: CompareOp, literal: Literal) -> ColumnPredicate {
    ColumnPredicate {
        column,
        op,
        literal,
    }
}

/// Predicates on columns that follow the key order skip row groups and pages (the counts
/// are exact), the others skip nothing, and no scan ever loses a matching row or returns
/// a row that is not in the table.
#[test]
fn pruning_skips_row_groups_and_pages_but_never_a_matching_row() {
    use CompareOp::*;
    use Literal as L;
    type Case = (
        &'static str,
        Vec<ColumnPredicate>,
        fn(&PruneRow) -> bool,
        usize,
        u64,
    );
    let (id, amount, ts, name, maybe, f, scrambled, key) = (0, 1, 2, 3, 4, 5, 6, 7);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // (what, predicates, which rows match, row groups read, rows read)
        ("id = 1000", vec![predicate(id, Eq, L::Int(1000))], |r| r.id == 1000, 1, 10),
        ("id < 500", vec![predicate(id, Lt, L::Int(500))], |r| r.id < 500, 3, 250),
        ("id <= 398", vec![predicate(id, LtEq, L::Int(398))], |r| r.id <= 398, 2, 200),
        ("id > 1797", vec![predicate(id, Gt, L::Int(1797))], |r| r.id > 1797, 2, 110),
        ("id >= 1800", vec![predicate(id, GtEq, L::Int(1800))], |r| r.id >= 1800, 1, 100),
        ("id > 1998", vec![predicate(id, Gt, L::Int(1998))], |_| false, 0, 0),
        ("id = 1001 (absent)", vec![predicate(id, Eq, L::Int(1001))], |_| false, 1, 10),
        ("400 <= id < 600",
         vec![predicate(id, GtEq, L::Int(400)), predicate(id, Lt, L::Int(600))],
         |r| (400..600).contains(&r.id), 1, 100),
        ("key >= key(1500)", vec![predicate(key, GtEq, L::Bytes(key_of(1500).to_vec()))],
         |r| r.id >= 1500, 3, 250),
        ("amount >= 1800.00",
         vec![predicate(amount, GtEq, L::Decimal { value: 180_000, scale: 2 })],
         |r| r.id >= 1800, 1, 100),
        ("amount >= 1800.0000 (rescaled)",
         vec![predicate(amount, GtEq, L::Decimal { value: 18_000_000, scale: 4 })],
         |r| r.id >= 1800, 1, 100),
        ("amount < 200 (integer)", vec![predicate(amount, Lt, L::Int(200))],
         |r| r.id < 200, 1, 100),
        ("amount = 100.0001 (inexact)",
         vec![predicate(amount, Eq, L::Decimal { value: 1_000_001, scale: 4 })],
         |_| false, 10, 1000),
        ("ts < base + 200 s", vec![predicate(ts, Lt, L::Timestamp(TS_BASE + 200_000_000))],
         |r| r.id < 200, 1, 100),
        ("name >= 'name01800'", vec![predicate(name, GtEq, L::Text("name01800".into()))],
         |r| r.name.as_str() >= "name01800", 1, 100),
        ("maybe >= 0 (NULL in the first half)", vec![predicate(maybe, GtEq, L::Int(0))],
         |r| r.maybe.is_some(), 5, 500),
        ("maybe < 0", vec![predicate(maybe, Lt, L::Int(0))], |_| false, 0, 0),
        ("id >= 1000 and maybe < 1100",
         vec![predicate(id, GtEq, L::Int(1000)), predicate(maybe, Lt, L::Int(1100))],
         |r| r.id >= 1000 && r.maybe.is_some_and(|m| m < 1100), 1, 50),
        ("f = 1000.0", vec![predicate(f, Eq, L::Float(1000.0))], |r| r.f == 1000.0, 1, 10),
        ("f = 1000 (integer)", vec![predicate(f, Eq, L::Int(1000))], |r| r.f == 1000.0, 1, 10),
        ("f > 1500.0 (floats: only = prunes)", vec![predicate(f, Gt, L::Float(1500.0))],
         |r| r.f > 1500.0, 10, 1000),
        // A permutation of 0..1000: every row group and most pages hold values on both
        // sides of 500, so nothing is skipped; 999 is in one row only.
        ("scrambled <= 500 (no order)", vec![predicate(scrambled, LtEq, L::Int(500))],
         |r| r.scrambled <= 500, 10, 1000),
        ("scrambled = 999 (one row)", vec![predicate(scrambled, Eq, L::Int(999))],
         |r| r.scrambled == 999, 1, 10),
        ("id < 2.5 (inexact)", vec![predicate(id, Lt, L::Float(2.5))], |r| r.id < 3, 10, 1000),
        ("name = 5 (wrong type)", vec![predicate(name, Eq, L::Int(5))], |_| false, 10, 1000),
    ];
    let (def, rows, encoded) = prune_table();
    let options = EncodeOptions {
        row_group_rows: 100,
        page_rows: 10,
    };
    let source = MemorySource::new(encode_with_options(&def, &encoded, options).unwrap());
    let full = expected_batch(&def, &encoded);
    block_on(async {
        let pages = ColumnPages::open(&source).await.unwrap();
        for (what, predicates, matches, row_groups_read, rows_read) in cases {
            let scanned = pages.scan(&source, None, &predicates, 64).await.unwrap();
            let got = all_rows(&scanned);
            // Every row returned is a row of the table, whole and unchanged.
            let keys = got.column(key).as_binary::<i32>();
            let mut returned = std::collections::HashSet::new();
            for (j, k) in keys.iter().enumerate() {
                let i = encoded
                    .binary_search_by(|(e, _)| e[..].cmp(k.unwrap()))
                    .unwrap();
                assert_eq!(got.slice(j, 1), full.slice(i, 1), "{what}");
                returned.insert(i);
            }
            // No matching row is lost.
            for (i, row) in rows.iter().enumerate() {
                assert!(
                    !matches(row) || returned.contains(&i),
                    "{what}: lost {row:?}"
                );
            }
            let stats = scanned.stats;
            assert_eq!(
                (
                    stats.row_groups_read,
                    stats.row_groups_skipped,
                    stats.rows_read
                ),
                (row_groups_read, 10 - row_groups_read, rows_read),
                "{what}"
            );
            let selected = row_groups_read as u64 * 100 - stats.rows_skipped_by_pages;
            assert_eq!(selected, rows_read, "{what}");
        }
    });
}

/// A projected or pruned scan fetches only the footer and the chunks (or pages) it needs.
#[test]
fn scans_read_only_what_they_need() {
    let def = table(vec![
        column("id", ColumnType::BigInt),
        column("payload", ColumnType::Text),
    ]);
    let mut rng = Rng::new(11);
    let cells: Vec<(i64, Vec<Cell>)> = (0..2_000)
        .map(|id| {
            let payload: String = (0..400)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            (id, vec![Cell::I64(id), Cell::Text(payload)])
        })
        .collect();
    let rows = encode_rows(&cells);
    let file = encode(&def, &rows).unwrap();
    let file_len = file.len() as u64;
    let source = MemorySource::new(file);
    block_on(async {
        let full = scan(&source, None, &[], 1_000).await.unwrap();
        assert!(full.stats.bytes_read >= file_len / 2, "{:?}", full.stats);
        let reads_before = source.n_reads();
        let ids = scan(&source, Some(&[0]), &[], 1_000).await.unwrap();
        assert_eq!(ids.stats.n_reads, source.n_reads() - reads_before);
        // The footer, then the id and key chunks (not adjacent: the payload lies between).
        assert_eq!(ids.stats.n_reads, 3, "{:?}", ids.stats);
        assert!(
            ids.stats.bytes_read * 4 < file_len,
            "{:?} of {file_len}",
            ids.stats
        );
        assert_eq!(all_rows(&ids).num_rows(), 2_000);

        let none = predicate(0, CompareOp::Gt, Literal::Int(5_000));
        let pruned = scan(&source, None, &[none], 1_000).await.unwrap();
        assert_eq!((pruned.stats.n_reads, pruned.batches.len()), (1, 0));

        // With pages of 100 rows, a point query fetches one page of each column (and the
        // payload's dictionary page, at most COLUMN_DICTIONARY_BYTES_MAX), not the chunks.
        let options = EncodeOptions {
            row_group_rows: COLUMN_ROW_GROUP_ROWS,
            page_rows: 100,
        };
        let paged = MemorySource::new(encode_with_options(&def, &rows, options).unwrap());
        let pages = ColumnPages::open(&paged).await.unwrap();
        let everything = pages.scan(&paged, None, &[], 1_000).await.unwrap();
        let one = predicate(0, CompareOp::Eq, Literal::Int(1_234));
        let point = pages.scan(&paged, None, &[one], 1_000).await.unwrap();
        assert_eq!(all_rows(&point).num_rows(), 100);
        assert_eq!(point.stats.rows_skipped_by_pages, 1_900);
        assert!(
            point.stats.bytes_read * 5 < everything.stats.bytes_read,
            "{:?} {:?}",
            point.stats,
            everything.stats
        );
    });
}

/// A scan of `damaged`, with and without a predicate, is an error (Corrupt) or `expected`.
async fn check_damaged(damaged: Bytes, expected: &RecordBatch, what: &str) {
    let source = MemorySource::new(damaged);
    let id_predicate = predicate(0, CompareOp::GtEq, Literal::Int(i64::MIN));
    for predicates in [vec![], vec![id_predicate]] {
        match scan(&source, None, &predicates, 7).await {
            Ok(scanned) => assert_eq!(&all_rows(&scanned), expected, "{what}"),
            Err(PageserverError::Corrupt { .. }) => {}
            Err(other) => panic!("{what}: {other}"),
        }
    }
}

/// Every flipped byte and every truncation of a file is an error (Corrupt) or, where the
/// damage is in bytes a scan never uses, the right answer; never a panic or a wrong row.
#[test]
fn damaged_files_are_errors_never_wrong_rows() {
    let (def, rows) = random_table(&mut Rng::new(5), 40);
    let options = EncodeOptions {
        row_group_rows: 10,
        page_rows: 4,
    };
    let file = encode_with_options(&def, &rows, options).unwrap();
    let expected = expected_batch(&def, &rows);
    block_on(async {
        for i in 0..file.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut damaged = file.to_vec();
                damaged[i] ^= flip;
                check_damaged(
                    Bytes::from(damaged),
                    &expected,
                    &format!("byte {i} ^ {flip:#x}"),
                )
                .await;
            }
        }
        for len in 0..file.len() {
            check_damaged(file.slice(..len), &expected, &format!("truncated to {len}")).await;
        }
    });
}

#[test]
fn encode_refuses_unsorted_keys_bad_rows_and_bad_options() {
    let (def, rows) = random_table(&mut Rng::new(1), 10);
    let internal = |r: Result<Bytes>| matches!(r, Err(PageserverError::Internal(_)));
    let mut unsorted = rows.clone();
    unsorted.swap(3, 4);
    assert!(internal(encode(&def, &unsorted)));
    let mut duplicate = rows.clone();
    duplicate[4].0 = duplicate[3].0.clone();
    assert!(internal(encode(&def, &duplicate)));
    let zero = EncodeOptions {
        row_group_rows: 0,
        page_rows: 1,
    };
    assert!(internal(encode_with_options(&def, &rows, zero)));
    let mut clash = def.clone();
    clash.columns.push(column(KEY_COLUMN, ColumnType::Bytea));
    assert!(internal(encode(&clash, &rows)));
    for bad_value in [&b""[..], &[2, 0], &[1, 1, 8, 5, b'a']] {
        let mut bad = rows.clone();
        bad[6].1 = Bytes::copy_from_slice(bad_value);
        let result = encode(&def, &bad);
        let row = key_for_humans(&bad[6].0);
        let names_the_row = matches!(
            &result,
            Err(PageserverError::Corrupt { what, .. }) if what.contains(&row)
        );
        assert!(names_the_row, "{result:?}");
    }
}
