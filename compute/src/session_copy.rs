//! `COPY table [(columns)] FROM STDIN` in a session (`session::copy_in`).
//!
//! `execute` checks the statement and answers [`Outcome::CopyIn`]; the connection then feeds
//! each `CopyData` payload to [`Session::copy_data`], which decodes whole records
//! ([`crate::copy::CopyDecoder`]), turns each field into its column's type with PostgreSQL's
//! input functions (text and CSV) or receive functions (binary), and stores the rows
//! [`COPY_BATCH_ROWS`] at a time through the same checks as INSERT (NOT NULL, lengths,
//! primary-key uniqueness with one pipelined pageserver exchange per batch). Columns left
//! out of the column list are NULL. [`Session::copy_end`] stores the rest and ends the
//! statement as any other: its own transaction commits, or the explicit transaction goes on.
//! A COPY is one transaction, so its rows must fit in one WAL record
//! (`wal::RECORD_BYTES_MAX`); a larger one fails early, saying so, rather than at COMMIT.

use super::*;
use crate::copy::{context_text, CopyDecoder, CopyFormat, CopyOptions, Record};
use crate::pgtypes::{self, decode_param};

/// Decoded rows are checked and stored in the transaction this many at a time.
pub const COPY_BATCH_ROWS: usize = 4096;

/// A `COPY … FROM STDIN` waiting for (more of) its data.
pub struct CopyIn {
    table: Arc<TableDef>,
    /// The table column each input field fills, in input order.
    targets: Vec<usize>,
    /// The PostgreSQL type of each input field's column.
    oids: Vec<u32>,
    format: CopyFormat,
    decoder: CopyDecoder,
    record: Record,
    /// A row of typed NULLs, in table order: the start of every decoded row.
    nulls: Vec<ScalarValue>,
    /// Decoded rows not yet stored, with their line numbers.
    rows: Vec<Vec<ScalarValue>>,
    lines: Vec<u64>,
    copied: u64,
    /// Bytes of keys and rows this COPY has stored in the transaction.
    bytes: usize,
}

impl CopyIn {
    /// The overall format code CopyInResponse announces: 0 text or CSV, 1 binary.
    pub fn format_code(&self) -> i16 {
        i16::from(self.format == CopyFormat::Binary)
    }

    /// How many fields each record has.
    pub fn n_fields(&self) -> usize {
        self.targets.len()
    }
}

/// How the client ended the data of a COPY.
pub enum CopyEnd {
    /// CopyDone: store what is left and finish the statement.
    Done,
    /// CopyFail, a broken connection or a failure while storing: the statement fails.
    Failed(SqlError),
}

/// Rescales a decimal to `scale` digits after the point, rounding half away from zero as
/// PostgreSQL's numeric does; `None` if it then has more than `precision` digits.
fn fit_decimal(value: i128, from_scale: i8, precision: u8, scale: i8) -> Option<i128> {
    let shift = i32::from(scale) - i32::from(from_scale);
    let value = if shift >= 0 {
        value.checked_mul(10i128.checked_pow(shift as u32)?)?
    } else if -shift > 38 {
        0
    } else {
        let divisor = 10i128.pow((-shift) as u32);
        let (quotient, remainder) = (value / divisor, value % divisor);
        if remainder.unsigned_abs() * 2 >= divisor.unsigned_abs() {
            quotient + value.signum()
        } else {
            quotient
        }
    };
    (value.unsigned_abs() < 10u128.pow(u32::from(precision))).then_some(value)
}

/// `value` as column `column`'s type: a numeric is rounded to the column's scale and must
/// fit its precision; the input functions already give every other type.
fn fit_column(column: &ColumnDef, value: ScalarValue) -> Result<ScalarValue, SqlError> {
    let target = column.column_type.arrow_type();
    if let (ColumnType::Varchar(Some(max)), ScalarValue::Utf8(Some(text))) =
        (&column.column_type, &value)
    {
        // As varchar's input function does, so the error names the line and column.
        if text.chars().count() > *max as usize {
            return Err(SqlError::new(
                sqlstate::STRING_DATA_RIGHT_TRUNCATION,
                format!("value too long for type character varying({max})"),
            ));
        }
    }
    if column.column_type.matches_arrow(&value.data_type()) {
        return Ok(value);
    }
    if let (ColumnType::Numeric { precision, scale }, ScalarValue::Decimal128(v, _, from)) =
        (&column.column_type, &value)
    {
        return match v {
            None => Ok(ScalarValue::Decimal128(None, *precision, *scale)),
            Some(v) => match fit_decimal(*v, *from, *precision, *scale) {
                Some(v) => Ok(ScalarValue::Decimal128(Some(v), *precision, *scale)),
                None => Err(SqlError::new(
                    sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                    "numeric field overflow",
                )
                .with_detail(format!(
                    "A field with precision {precision}, scale {scale} must round to an \
                     absolute value less than 10^{}.",
                    i16::from(*precision) - i16::from(*scale)
                ))),
            },
        };
    }
    value.cast_to(&target).map_err(|e| value_error(column, e))
}

impl Session {
    /// Starts `COPY table [(columns)] FROM STDIN`; every other COPY is refused.
    pub(super) fn copy_from_stdin(&mut self, stmt: &Statement) -> Result<Outcome, SqlError> {
        let Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            values,
        } = stmt
        else {
            return Err(SqlError::internal("not a COPY statement"));
        };
        let (table_name, columns) = match (source, to, target) {
            (
                ast::CopySource::Table {
                    table_name,
                    columns,
                },
                false,
                ast::CopyTarget::Stdin,
            ) => (table_name, columns),
            (_, true, _) => return Err(SqlError::unsupported("COPY TO")),
            (ast::CopySource::Query(_), ..) => {
                return Err(SqlError::unsupported("COPY from a query"))
            }
            (_, _, ast::CopyTarget::File { .. } | ast::CopyTarget::Program { .. }) => {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "COPY FROM a file or program is not supported: the server has no files \
                     of yours",
                )
                .with_hint("Use COPY … FROM STDIN, or psql's \\copy."))
            }
            _ => return Err(SqlError::unsupported("this form of COPY")),
        };
        if !values.is_empty() {
            return Err(SqlError::unsupported(
                "COPY data inside the query string; send it with the COPY protocol",
            ));
        }
        let table = self.lookup(table_name)?;
        let targets: Vec<usize> = if columns.is_empty() {
            (0..table.columns.len()).collect()
        } else {
            let mut targets = Vec::with_capacity(columns.len());
            for ident in columns {
                let name = ident_name(ident);
                let at = table.column_index(&name).ok_or_else(|| {
                    SqlError::new(
                        sqlstate::UNDEFINED_COLUMN,
                        format!(
                            "column \"{name}\" of relation \"{}\" does not exist",
                            table.name
                        ),
                    )
                })?;
                if targets.contains(&at) {
                    return Err(SqlError::new(
                        sqlstate::DUPLICATE_COLUMN,
                        format!("column \"{name}\" specified more than once"),
                    ));
                }
                targets.push(at);
            }
            targets
        };
        let names: Vec<String> = targets
            .iter()
            .map(|&i| table.columns[i].name.clone())
            .collect();
        let options = CopyOptions::from_statement(options, legacy_options, &names)?;
        let oids = targets
            .iter()
            .map(|&i| pgtypes::pg_type_for_column(&table.columns[i].column_type).oid)
            .collect();
        let nulls = table
            .columns
            .iter()
            .map(|c| ScalarValue::try_from(&c.column_type.arrow_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SqlError::internal)?;
        // The COPY's writes go into the statement's transaction, started now.
        self.txn();
        Ok(Outcome::CopyIn(Box::new(CopyIn {
            format: options.format,
            decoder: CopyDecoder::new(options, names),
            table,
            targets,
            oids,
            record: Record::default(),
            nulls,
            rows: Vec::with_capacity(COPY_BATCH_ROWS),
            lines: Vec::with_capacity(COPY_BATCH_ROWS),
            copied: 0,
            bytes: 0,
        })))
    }

    /// Decodes and stores the records in one `CopyData` payload (and any a previous one
    /// began).
    pub async fn copy_data(&mut self, copy: &mut CopyIn, data: &[u8]) -> Result<(), SqlError> {
        copy.decoder.push(data);
        self.copy_records(copy, false).await
    }

    /// Ends the COPY: on [`CopyEnd::Done`] stores what is left and finishes the statement
    /// (`COPY n`), else fails it.
    pub async fn copy_end(&mut self, copy: Box<CopyIn>, end: CopyEnd) -> Result<Outcome, SqlError> {
        let mut copy = copy;
        let result = match end {
            CopyEnd::Done => match self.copy_records(&mut copy, true).await {
                Ok(()) => self
                    .store_copied(&mut copy)
                    .await
                    .map(|()| Outcome::Command(format!("COPY {}", copy.copied))),
                Err(e) => Err(e),
            },
            CopyEnd::Failed(e) => Err(e),
        };
        self.end_statement(result).await
    }

    async fn copy_records(&mut self, copy: &mut CopyIn, at_end: bool) -> Result<(), SqlError> {
        loop {
            let more = copy
                .decoder
                .next_record(&mut copy.record, at_end)
                .map_err(|e| {
                    let context = match &e.line_text {
                        Some(text) => {
                            format!("COPY {}, line {}: \"{text}\"", copy.table.name, e.line)
                        }
                        None => format!("COPY {}, line {}", copy.table.name, e.line),
                    };
                    SqlError::new(e.code, e.message).with_context(context)
                })?;
            if !more {
                return Ok(());
            }
            let row = decode_row(copy)?;
            copy.rows.push(row);
            copy.lines.push(copy.record.line);
            if copy.rows.len() >= COPY_BATCH_ROWS {
                self.store_copied(copy).await?;
            }
        }
    }

    /// Stores the decoded rows waiting in `copy`.
    async fn store_copied(&mut self, copy: &mut CopyIn) -> Result<(), SqlError> {
        let rows = std::mem::take(&mut copy.rows);
        let lines = std::mem::take(&mut copy.lines);
        let table = copy.table.clone();
        let bytes = self.store_rows(&table, &rows).await.map_err(|(i, e)| {
            let context = format!("COPY {}, line {}", table.name, lines.get(i).unwrap_or(&0));
            e.with_context(context)
        })?;
        copy.copied += rows.len() as u64;
        copy.bytes += bytes;
        if copy.bytes > wal::RECORD_BYTES_MAX {
            return Err(SqlError::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "COPY holds more than {} MiB of rows, the most one transaction may write",
                    wal::RECORD_BYTES_MAX >> 20
                ),
            )
            .with_hint("Split the data into several COPY commands, each in its own transaction."));
        }
        copy.rows = rows;
        copy.rows.clear();
        copy.lines = lines;
        copy.lines.clear();
        Ok(())
    }
}

/// The row in `copy.record`, in table order, each field in its column's type.
fn decode_row(copy: &CopyIn) -> Result<Vec<ScalarValue>, SqlError> {
    let mut values = copy.nulls.clone();
    let binary = copy.format == CopyFormat::Binary;
    for (field, &target) in copy.targets.iter().enumerate() {
        let Some(bytes) = copy.record.field(field) else {
            continue;
        };
        let column = &copy.table.columns[target];
        let value = decode_param(copy.oids[field], i16::from(binary), bytes)
            .map_err(|e| SqlError::new(e.sqlstate(), e.message()))
            .and_then(|value| fit_column(column, value))
            .map_err(|e| {
                let mut context = format!(
                    "COPY {}, line {}, column {}",
                    copy.table.name, copy.record.line, column.name
                );
                if !binary {
                    context.push_str(&format!(": \"{}\"", context_text(bytes)));
                }
                e.with_context(context)
            })?;
        values[target] = value;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_half_away_from_zero_and_respect_precision() {
        assert_eq!(fit_decimal(1005, 3, 15, 2), Some(101));
        assert_eq!(fit_decimal(-1005, 3, 15, 2), Some(-101));
        assert_eq!(fit_decimal(1004, 3, 15, 2), Some(100));
        assert_eq!(fit_decimal(12, 0, 15, 2), Some(1200));
        assert_eq!(fit_decimal(99995, 3, 4, 2), None); // 100.00 needs 5 digits
        assert_eq!(fit_decimal(99994, 3, 4, 2), Some(9999));
        assert_eq!(fit_decimal(5, 38, 10, 0), Some(0));
        assert_eq!(fit_decimal(1, 0, 38, 38), None);
    }
}
