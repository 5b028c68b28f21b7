//! The data of `COPY … FROM STDIN`: the statement's options and an incremental decoder of
//! PostgreSQL's three COPY formats (text, CSV and binary) into records of fields.
//!
//! The decoder is fed the payloads of `CopyData` messages as they arrive (a record may span
//! several) and hands out whole records; what a field means (its type) is the session's
//! business. It follows PostgreSQL 15's rules: in text format a field equal to the NULL string
//! before de-escaping is NULL and backslash escapes (`\t`, `\n`, octal, `\x` hex, any other
//! character itself, an escaped newline is data); in CSV a quoted field is never NULL unless
//! FORCE_NULL names its column, and quotes may hold delimiters and newlines; a line holding
//! only `\.` ends the data; binary data has PostgreSQL's signature, flags, header extension,
//! per-tuple field counts and length-prefixed values. Pure: no I/O, never panics on input.

use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, Ident};

use crate::error::{sqlstate, SqlError};

/// The signature that starts binary COPY data.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Consumed input is dropped from the decoder's buffer once this many bytes of it pile up.
const COMPACT_BYTES: usize = 1 << 20;
/// Characters of a line or value quoted in an error's context, as PostgreSQL limits them.
const CONTEXT_CHARS_MAX: usize = 100;

/// The three formats of COPY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The options of one COPY statement, checked as PostgreSQL checks them.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
    /// Per input field: an unquoted NULL string is an empty string (CSV FORCE_NOT_NULL).
    pub force_not_null: Vec<bool>,
    /// Per input field: a quoted NULL string is NULL (CSV FORCE_NULL).
    pub force_null: Vec<bool>,
}

fn bad_option(message: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::SYNTAX_ERROR, message)
}

/// Sets an option given at most once.
fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), SqlError> {
    match slot.replace(value) {
        Some(_) => Err(bad_option("conflicting or redundant options")),
        None => Ok(()),
    }
}

fn one_byte(what: &str, c: char) -> Result<u8, SqlError> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| {
            SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("COPY {what} must be a single one-byte character"),
            )
        })
}

/// Marks the named input fields; every name must be one of `fields`.
fn column_flags(
    option: &str,
    names: &[Ident],
    fields: &[String],
    flags: &mut [bool],
) -> Result<(), SqlError> {
    for name in names {
        let name = crate::session::ident_name(name);
        let at = fields.iter().position(|f| *f == name).ok_or_else(|| {
            SqlError::new(
                sqlstate::INVALID_COLUMN_REFERENCE,
                format!("{option} column \"{name}\" not referenced by COPY"),
            )
        })?;
        flags[at] = true;
    }
    Ok(())
}

impl CopyOptions {
    /// The options of `COPY t [(fields)] FROM STDIN [WITH] (…)` in either the current or the
    /// pre-9.0 syntax. `fields` names the input fields in order.
    pub fn from_statement(
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        fields: &[String],
    ) -> Result<CopyOptions, SqlError> {
        let mut format = None;
        let (mut delimiter, mut null, mut header, mut quote, mut escape) =
            (None, None, None, None, None);
        let mut force_not_null = vec![false; fields.len()];
        let mut force_null = vec![false; fields.len()];
        let mut forced = false;
        for option in options {
            match option {
                CopyOption::Format(name) => {
                    let f = match name.value.to_ascii_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        other => {
                            return Err(SqlError::new(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                format!("COPY format \"{other}\" not recognized"),
                            ))
                        }
                    };
                    set(&mut format, f)?;
                }
                CopyOption::Delimiter(c) => set(&mut delimiter, one_byte("delimiter", *c)?)?,
                CopyOption::Null(s) => set(&mut null, s.as_bytes().to_vec())?,
                CopyOption::Header(h) => set(&mut header, *h)?,
                CopyOption::Quote(c) => set(&mut quote, one_byte("quote", *c)?)?,
                CopyOption::Escape(c) => set(&mut escape, one_byte("escape", *c)?)?,
                CopyOption::ForceNotNull(names) => {
                    forced = true;
                    column_flags("FORCE_NOT_NULL", names, fields, &mut force_not_null)?;
                }
                CopyOption::ForceNull(names) => {
                    forced = true;
                    column_flags("FORCE_NULL", names, fields, &mut force_null)?;
                }
                CopyOption::ForceQuote(_) => {
                    return Err(bad_option("COPY FORCE_QUOTE cannot be used with COPY FROM"))
                }
                CopyOption::Freeze(_) | CopyOption::Encoding(_) => {
                    return Err(SqlError::unsupported(format!("COPY option {option}")))
                }
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => set(&mut format, CopyFormat::Binary)?,
                CopyLegacyOption::Delimiter(c) => set(&mut delimiter, one_byte("delimiter", *c)?)?,
                CopyLegacyOption::Null(s) => set(&mut null, s.as_bytes().to_vec())?,
                CopyLegacyOption::Header => set(&mut header, true)?,
                CopyLegacyOption::Csv(csv) => {
                    set(&mut format, CopyFormat::Csv)?;
                    for option in csv {
                        match option {
                            CopyLegacyCsvOption::Header => set(&mut header, true)?,
                            CopyLegacyCsvOption::Quote(c) => {
                                set(&mut quote, one_byte("quote", *c)?)?
                            }
                            CopyLegacyCsvOption::Escape(c) => {
                                set(&mut escape, one_byte("escape", *c)?)?
                            }
                            CopyLegacyCsvOption::ForceNotNull(names) => {
                                forced = true;
                                column_flags("FORCE_NOT_NULL", names, fields, &mut force_not_null)?;
                            }
                            CopyLegacyCsvOption::ForceQuote(_) => {
                                return Err(bad_option(
                                    "COPY FORCE_QUOTE cannot be used with COPY FROM",
                                ))
                            }
                        }
                    }
                }
                other => return Err(SqlError::unsupported(format!("COPY option {other}"))),
            }
        }
        let format = format.unwrap_or(CopyFormat::Text);
        let csv = format == CopyFormat::Csv;
        if format == CopyFormat::Binary && (delimiter.is_some() || null.is_some()) {
            return Err(bad_option(
                "cannot specify DELIMITER or NULL in BINARY mode",
            ));
        }
        if !csv && quote.is_some() {
            return Err(bad_option("COPY quote available only in CSV mode"));
        }
        if !csv && escape.is_some() {
            return Err(bad_option("COPY escape available only in CSV mode"));
        }
        if !csv && forced {
            return Err(bad_option(
                "COPY FORCE_NOT_NULL and FORCE_NULL are available only in CSV mode",
            ));
        }
        if format == CopyFormat::Binary && header == Some(true) {
            return Err(bad_option("cannot specify HEADER in BINARY mode"));
        }
        let delimiter = delimiter.unwrap_or(if csv { b',' } else { b'\t' });
        let null = null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() });
        let quote = quote.unwrap_or(b'"');
        let escape = escape.unwrap_or(quote);
        if matches!(delimiter, b'\r' | b'\n') {
            return Err(bad_option(
                "COPY delimiter cannot be newline or carriage return",
            ));
        }
        if null.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(bad_option(
                "COPY null representation cannot use newline or carriage return",
            ));
        }
        if !csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
            return Err(bad_option(format!(
                "COPY delimiter cannot be \"{}\"",
                delimiter as char
            )));
        }
        if csv && delimiter == quote {
            return Err(bad_option("COPY delimiter and quote must be different"));
        }
        if null.contains(&delimiter) {
            return Err(bad_option(
                "COPY delimiter must not appear in the NULL specification",
            ));
        }
        Ok(CopyOptions {
            format,
            delimiter,
            null,
            header: header.unwrap_or(false),
            quote,
            escape,
            force_not_null,
            force_null,
        })
    }
}

/// One decoded record: its fields' bytes (de-escaped, de-quoted) in one buffer.
#[derive(Debug, Default)]
pub struct Record {
    data: Vec<u8>,
    fields: Vec<Option<(usize, usize)>>,
    /// The record's line number (text, CSV: lines of input, the header included, starting
    /// at 1; binary: tuples), for error contexts.
    pub line: u64,
}

impl Record {
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i`'s bytes, `None` for NULL.
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        self.fields
            .get(i)
            .copied()
            .flatten()
            .map(|(start, end)| &self.data[start..end])
    }

    fn clear(&mut self) {
        self.data.clear();
        self.fields.clear();
    }

    fn push_null(&mut self) {
        self.fields.push(None);
    }

    /// Ends a field whose bytes were appended to `data` since `start`.
    fn end_field(&mut self, start: usize) {
        self.fields.push(Some((start, self.data.len())));
    }
}

/// A malformed piece of COPY data (SQLSTATE 22P04 unless said otherwise), with the line it
/// was found on and, for text and CSV, that line's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDataError {
    pub code: &'static str,
    pub message: String,
    pub line: u64,
    pub line_text: Option<String>,
}

/// `s` as an error context quotes it: at most [`CONTEXT_CHARS_MAX`] characters, then "...".
pub fn context_text(s: &[u8]) -> String {
    let s = String::from_utf8_lossy(s);
    match s.char_indices().nth(CONTEXT_CHARS_MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.into_owned(),
    }
}

/// Decodes COPY data fed to it piece by piece into records of `n_fields` fields.
pub struct CopyDecoder {
    options: CopyOptions,
    /// The input fields' column names, for errors.
    names: Vec<String>,
    n_fields: usize,
    buf: Vec<u8>,
    pos: usize,
    line: u64,
    header_pending: bool,
    binary_header_pending: bool,
    ended: bool,
}

enum Step {
    /// A record is ready.
    Record,
    /// A line to skip (the header).
    Skip,
    /// More input is needed, or the data ended.
    Wait,
}

impl CopyDecoder {
    /// A decoder of records with one field for each of `names` (the columns they fill).
    pub fn new(options: CopyOptions, names: Vec<String>) -> CopyDecoder {
        let binary = options.format == CopyFormat::Binary;
        CopyDecoder {
            header_pending: options.header,
            binary_header_pending: binary,
            options,
            n_fields: names.len(),
            names,
            buf: Vec::new(),
            pos: 0,
            line: 0,
            ended: false,
        }
    }

    /// Whether the end-of-data marker (`\.`, or binary data's trailer) was seen; input after
    /// it is ignored.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Adds a piece of input.
    pub fn push(&mut self, data: &[u8]) {
        if self.ended {
            return;
        }
        if self.pos >= COMPACT_BYTES || self.pos == self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Decodes the next whole record into `record`: `Ok(true)` if there was one, `Ok(false)`
    /// if more input is needed or the data ended. With `at_end` (the client finished its
    /// data) a last line without a newline is a record, and a partial one is an error.
    pub fn next_record(
        &mut self,
        record: &mut Record,
        at_end: bool,
    ) -> Result<bool, CopyDataError> {
        loop {
            if self.ended {
                return Ok(false);
            }
            let step = match self.options.format {
                CopyFormat::Text | CopyFormat::Csv => self.next_line(record, at_end)?,
                CopyFormat::Binary => self.next_tuple(record, at_end)?,
            };
            match step {
                Step::Record => return Ok(true),
                Step::Skip => continue,
                Step::Wait => return Ok(false),
            }
        }
    }

    fn error(&self, message: impl Into<String>, line_text: Option<&[u8]>) -> CopyDataError {
        CopyDataError {
            code: sqlstate::BAD_COPY_FILE_FORMAT,
            message: message.into(),
            line: self.line,
            line_text: line_text.map(context_text),
        }
    }

    /// The end of the line starting at `self.pos` (the index of its `\n`, or of the end of
    /// the buffer) and whether it is complete. Text: a backslash escapes the next byte, a
    /// newline included. CSV: newlines inside quotes are data.
    fn find_line_end(&self) -> (usize, bool, bool) {
        let buf = &self.buf;
        let o = &self.options;
        let mut i = self.pos;
        let mut in_quote = false;
        while i < buf.len() {
            let c = buf[i];
            match o.format {
                CopyFormat::Csv if in_quote => {
                    if c == o.escape && o.escape != o.quote {
                        if i + 1 >= buf.len() {
                            return (buf.len(), false, true);
                        }
                        if buf[i + 1] == o.quote || buf[i + 1] == o.escape {
                            i += 2;
                            continue;
                        }
                    }
                    if c == o.quote {
                        in_quote = false;
                    }
                }
                CopyFormat::Csv if c == o.quote => in_quote = true,
                CopyFormat::Text if c == b'\\' => {
                    i += 2;
                    continue;
                }
                _ if c == b'\n' => return (i, true, false),
                _ => {}
            }
            i += 1;
        }
        (buf.len(), false, in_quote)
    }

    fn next_line(&mut self, record: &mut Record, at_end: bool) -> Result<Step, CopyDataError> {
        if self.pos >= self.buf.len() {
            return Ok(Step::Wait);
        }
        let (end, complete, in_quote) = self.find_line_end();
        if !complete && !at_end {
            return Ok(Step::Wait);
        }
        let start = self.pos;
        self.pos = if complete { end + 1 } else { self.buf.len() };
        self.line += 1;
        let mut line_end = end.min(self.buf.len());
        if line_end > start && self.buf[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        // Moved out for the borrow checker; put back below.
        let buf = std::mem::take(&mut self.buf);
        let line = &buf[start..line_end];
        let result = if !complete && in_quote {
            Err(self.error("unterminated CSV quoted field", Some(line)))
        } else if line == b"\\." {
            self.ended = true;
            Ok(Step::Wait)
        } else if std::mem::take(&mut self.header_pending) {
            Ok(Step::Skip)
        } else {
            record.clear();
            record.line = self.line;
            match self.options.format {
                CopyFormat::Csv => self.split_csv(line, record),
                _ => self.split_text(line, record),
            }
            self.check_count(record, line).map(|()| Step::Record)
        };
        self.buf = buf;
        result
    }

    fn check_count(&self, record: &Record, line: &[u8]) -> Result<(), CopyDataError> {
        if record.len() > self.n_fields {
            return Err(self.error("extra data after last expected column", Some(line)));
        }
        if record.len() < self.n_fields {
            let name = &self.names[record.len()];
            return Err(self.error(format!("missing data for column \"{name}\""), Some(line)));
        }
        Ok(())
    }

    fn split_text(&self, line: &[u8], record: &mut Record) {
        if self.n_fields == 0 && line.is_empty() {
            return;
        }
        let delimiter = self.options.delimiter;
        let mut start = 0;
        loop {
            let mut end = start;
            while end < line.len() && line[end] != delimiter {
                end += if line[end] == b'\\' { 2 } else { 1 };
            }
            let end = end.min(line.len());
            let raw = &line[start..end];
            if raw == self.options.null.as_slice() {
                record.push_null();
            } else {
                let at = record.data.len();
                unescape_text(raw, &mut record.data);
                record.end_field(at);
            }
            if end >= line.len() {
                return;
            }
            start = end + 1;
        }
    }

    fn split_csv(&self, line: &[u8], record: &mut Record) {
        let o = &self.options;
        if self.n_fields == 0 && line.is_empty() {
            return;
        }
        let mut i = 0;
        loop {
            let field = record.len();
            let at = record.data.len();
            let raw_start = i;
            let (mut saw_quote, mut in_quote) = (false, false);
            while i < line.len() {
                let c = line[i];
                if in_quote {
                    if c == o.escape
                        && line
                            .get(i + 1)
                            .is_some_and(|&n| n == o.quote || n == o.escape)
                    {
                        record.data.push(line[i + 1]);
                        i += 2;
                        continue;
                    }
                    if c == o.quote {
                        in_quote = false;
                    } else {
                        record.data.push(c);
                    }
                } else if c == o.delimiter {
                    break;
                } else if c == o.quote {
                    in_quote = true;
                    saw_quote = true;
                } else {
                    record.data.push(c);
                }
                i += 1;
            }
            let raw = &line[raw_start..i];
            let forced = |flags: &[bool]| flags.get(field).copied().unwrap_or(false);
            let is_null = if saw_quote {
                forced(&o.force_null) && record.data[at..] == o.null[..]
            } else {
                raw == o.null.as_slice() && !forced(&o.force_not_null)
            };
            if is_null {
                record.data.truncate(at);
                record.push_null();
            } else {
                record.end_field(at);
            }
            if i >= line.len() {
                return;
            }
            i += 1;
        }
    }

    fn next_tuple(&mut self, record: &mut Record, at_end: bool) -> Result<Step, CopyDataError> {
        let eof = |d: &CopyDecoder| -> Result<Step, CopyDataError> {
            if at_end {
                Err(d.error("unexpected EOF in COPY data", None))
            } else {
                Ok(Step::Wait)
            }
        };
        if self.binary_header_pending {
            let buf = &self.buf[self.pos..];
            if buf.len() < BINARY_SIGNATURE.len() + 8 {
                if at_end {
                    return Err(self.error("COPY file signature not recognized", None));
                }
                return Ok(Step::Wait);
            }
            if &buf[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
                return Err(self.error("COPY file signature not recognized", None));
            }
            let at = BINARY_SIGNATURE.len();
            let flags = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
            if flags & (1 << 16) != 0 {
                return Err(self.error("invalid COPY file header (WITH OIDS)", None));
            }
            if flags & 0xffff_0000 != 0 {
                return Err(self.error("unrecognized critical flags in COPY file header", None));
            }
            let ext = u32::from_be_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
            let header_len = (at + 8).saturating_add(ext as usize);
            if buf.len() < header_len {
                if at_end {
                    return Err(self.error("invalid COPY file header (wrong length)", None));
                }
                return Ok(Step::Wait);
            }
            self.pos += header_len;
            self.binary_header_pending = false;
        }
        let buf = &self.buf[self.pos..];
        if buf.is_empty() {
            return Ok(Step::Wait);
        }
        if buf.len() < 2 {
            return eof(self);
        }
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            self.ended = true;
            return Ok(Step::Wait);
        }
        if count < 0 || count as usize != self.n_fields {
            return Err(CopyDataError {
                line: self.line + 1,
                ..self.error(
                    format!("row field count is {count}, expected {}", self.n_fields),
                    None,
                )
            });
        }
        record.clear();
        let mut at = 2;
        for _ in 0..count {
            let Some(len) = buf.get(at..at + 4) else {
                record.clear();
                return eof(self);
            };
            let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
            at += 4;
            if len == -1 {
                record.push_null();
                continue;
            }
            if len < -1 {
                return Err(CopyDataError {
                    line: self.line + 1,
                    ..self.error("invalid field size", None)
                });
            }
            let Some(value) = buf.get(at..at + len as usize) else {
                record.clear();
                return eof(self);
            };
            let start = record.data.len();
            record.data.extend_from_slice(value);
            record.end_field(start);
            at += len as usize;
        }
        self.pos += at;
        self.line += 1;
        record.line = self.line;
        Ok(Step::Record)
    }
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Text format's backslash escapes, as PostgreSQL's `CopyReadAttributesText` reads them.
fn unescape_text(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i == raw.len() {
            out.push(c);
            continue;
        }
        let e = raw[i];
        i += 1;
        let byte = match e {
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            b'x' => match raw.get(i) {
                Some(&d) if d.is_ascii_hexdigit() => {
                    i += 1;
                    let mut v = hex_value(d);
                    if let Some(&d) = raw.get(i).filter(|d| d.is_ascii_hexdigit()) {
                        v = v * 16 + hex_value(d);
                        i += 1;
                    }
                    v
                }
                _ => b'x',
            },
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            other => other,
        };
        out.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;

    fn options_of(sql: &str, n: usize) -> Result<CopyOptions, SqlError> {
        let fields: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let stmt = crate::session::parse_sql(sql).expect("parses").remove(0);
        let Statement::Copy {
            options,
            legacy_options,
            ..
        } = stmt
        else {
            panic!("not a COPY: {sql}");
        };
        CopyOptions::from_statement(&options, &legacy_options, &fields)
    }

    /// Every record of `pieces` fed one by one, as `Some(text)`/`None` per field.
    fn decode(
        sql: &str,
        n: usize,
        pieces: &[&[u8]],
    ) -> Result<Vec<Vec<Option<String>>>, CopyDataError> {
        let names = (0..n).map(|i| format!("c{i}")).collect();
        let mut decoder = CopyDecoder::new(options_of(sql, n).expect("options"), names);
        let mut record = Record::default();
        let mut out = Vec::new();
        let mut take = |decoder: &mut CopyDecoder, at_end| -> Result<(), CopyDataError> {
            while decoder.next_record(&mut record, at_end)? {
                out.push(
                    (0..record.len())
                        .map(|i| {
                            record
                                .field(i)
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .collect(),
                );
            }
            Ok(())
        };
        for piece in pieces {
            decoder.push(piece);
            take(&mut decoder, false)?;
        }
        take(&mut decoder, true)?;
        Ok(out)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn text_format_escapes_nulls_and_the_end_marker() {
        let data: &[u8] = b"1\ta\\tb\\n\\\\\t\\N\n2\t\\101\\x41\\x4g\\q\t\\\\N\n\\.\nignored\n";
        let rows = decode("COPY t FROM STDIN", 3, &[data]).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![s("1"), s("a\tb\n\\"), None],
                vec![s("2"), s("AA\u{4}gq"), s("\\N")],
            ]
        );
    }

    #[test]
    fn records_split_anywhere_across_pieces_decode_the_same() {
        let data: &[u8] = b"1,\"a,\"\"b\nc\"\"\",\r\n2,,\"\"\n3,x,y";
        let whole = decode("COPY t FROM STDIN (FORMAT csv)", 3, &[data]).unwrap();
        assert_eq!(
            whole,
            vec![
                vec![s("1"), s("a,\"b\nc\""), None],
                vec![s("2"), None, s("")],
                vec![s("3"), s("x"), s("y")],
            ]
        );
        for cut in 0..data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(
                decode("COPY t FROM STDIN (FORMAT csv)", 3, &[a, b]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
        let text: &[u8] = b"1\tx\\\ny\n2\t\\N\n";
        let whole = decode("COPY t FROM STDIN", 2, &[text]).unwrap();
        assert_eq!(whole, vec![vec![s("1"), s("x\ny")], vec![s("2"), None]]);
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(decode("COPY t FROM STDIN", 2, &[a, b]).unwrap(), whole);
        }
    }

    #[test]
    fn csv_options_header_null_escape_and_forcing() {
        let data: &[u8] = b"a|b|c\n1|NULL|'NULL'\n2|'x\\'y'|\n";
        let rows = decode(
            "COPY t FROM STDIN (FORMAT csv, HEADER, DELIMITER '|', NULL 'NULL', QUOTE '''', ESCAPE '\\')",
            3,
            &[data],
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![vec![s("1"), None, s("NULL")], vec![s("2"), s("x'y"), s("")]]
        );
        let rows = decode(
            "COPY t FROM STDIN (FORMAT csv, FORCE_NOT_NULL (c1), FORCE_NULL (c2))",
            3,
            &[b"1,,\"\"\n"],
        )
        .unwrap();
        assert_eq!(rows, vec![vec![s("1"), s(""), None]]);
        let legacy = decode("COPY t FROM STDIN WITH CSV HEADER", 2, &[b"h1,h2\n1,2\n"]).unwrap();
        assert_eq!(legacy, vec![vec![s("1"), s("2")]]);
    }

    #[test]
    fn malformed_data_is_reported_with_its_line() {
        let err = decode("COPY t FROM STDIN", 2, &[b"1\t2\n3\n"]).unwrap_err();
        assert_eq!((err.line, err.code), (2, sqlstate::BAD_COPY_FILE_FORMAT));
        assert_eq!(err.message, "missing data for column \"c1\"");
        let err = decode("COPY t FROM STDIN", 2, &[b"1\t2\t3\n"]).unwrap_err();
        assert_eq!(err.message, "extra data after last expected column");
        assert_eq!(err.line_text.as_deref(), Some("1\t2\t3"));
        let err = decode("COPY t FROM STDIN (FORMAT csv)", 2, &[b"1,\"open\n"]).unwrap_err();
        assert_eq!(err.message, "unterminated CSV quoted field");
        let long = vec![b'x'; 300];
        let err = decode("COPY t FROM STDIN", 2, &[&long]).unwrap_err();
        assert_eq!(err.line_text.unwrap().len(), 103);
    }

    fn binary(tuples: &[Vec<Option<&[u8]>>], trailer: bool) -> Vec<u8> {
        let mut out = BINARY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"skip");
        for tuple in tuples {
            out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
            for field in tuple {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        if trailer {
            out.extend_from_slice(&(-1i16).to_be_bytes());
        }
        out
    }

    #[test]
    fn binary_format_in_any_pieces() {
        let data = binary(
            &[
                vec![Some(&[0, 0, 0, 7]), None],
                vec![Some(&[0, 0, 0, 8]), Some(b"hi")],
            ],
            true,
        );
        let want = vec![
            vec![s("\0\0\0\u{7}"), None],
            vec![s("\0\0\0\u{8}"), s("hi")],
        ];
        for cut in 0..data.len() {
            let (a, b) = data.split_at(cut);
            let rows = decode("COPY t FROM STDIN (FORMAT binary)", 2, &[a, b]).unwrap();
            assert_eq!(rows, want, "cut at {cut}");
        }
        let cut_short = &data[..data.len() - 4];
        let err = decode("COPY t FROM STDIN (FORMAT binary)", 2, &[cut_short]).unwrap_err();
        assert_eq!(err.message, "unexpected EOF in COPY data");
        let err = decode("COPY t FROM STDIN (FORMAT binary)", 3, &[&data]).unwrap_err();
        assert_eq!(err.message, "row field count is 2, expected 3");
        let err = decode(
            "COPY t FROM STDIN (FORMAT binary)",
            2,
            &[b"PGCOPY\nXXXXXXXXXXXXXX"],
        )
        .unwrap_err();
        assert_eq!(err.message, "COPY file signature not recognized");
    }

    #[test]
    fn options_are_checked_as_postgresql_checks_them() {
        let msg = |sql: &str| options_of(sql, 2).unwrap_err().message;
        assert_eq!(
            msg("COPY t FROM STDIN (FORMAT text, QUOTE '\"')"),
            "COPY quote available only in CSV mode"
        );
        assert_eq!(
            msg("COPY t FROM STDIN (FORMAT csv, DELIMITER ',', QUOTE ',')"),
            "COPY delimiter and quote must be different"
        );
        assert_eq!(
            msg("COPY t FROM STDIN (FORMAT csv, FORCE_NULL (zz))"),
            "FORCE_NULL column \"zz\" not referenced by COPY"
        );
        assert_eq!(
            msg("COPY t FROM STDIN (FORMAT json)"),
            "COPY format \"json\" not recognized"
        );
        assert_eq!(
            msg("COPY t FROM STDIN (FORMAT csv, FORMAT text)"),
            "conflicting or redundant options"
        );
        let o = options_of("COPY t FROM STDIN (FORMAT csv)", 2).unwrap();
        assert_eq!(
            (o.delimiter, o.null.as_slice(), o.quote, o.escape),
            (b',', &b""[..], b'"', b'"')
        );
        let o = options_of("COPY t FROM STDIN", 2).unwrap();
        assert_eq!((o.delimiter, o.null.as_slice()), (b'\t', &b"\\N"[..]));
    }
}
