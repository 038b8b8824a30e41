//! One Parquet file of rows, written column by column with the parquet crate's own
//! writers (no arrow), zstd-compressed; and read back row by row.
//!
//! Columns are text (UTF-8 strings), 64-bit integers, timestamps (Unix ms, UTC) or
//! booleans, each optional or not: the types every reader (pyarrow, duckdb, Spark) maps
//! without a question.

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Rows per row group (a reader holds one group's pages at a time).
const GROUP_ROWS: usize = 64 * 1024;

/// A column's values, `None` where the row has none.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    /// Unix milliseconds, UTC.
    Time(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Text(v) => v.len(),
            Values::Int(v) | Values::Time(v) => v.len(),
            Values::Bool(v) => v.len(),
        }
    }

    fn all_present(&self) -> bool {
        match self {
            Values::Text(v) => v.iter().all(Option::is_some),
            Values::Int(v) | Values::Time(v) => v.iter().all(Option::is_some),
            Values::Bool(v) => v.iter().all(Option::is_some),
        }
    }
}

/// A named column. A column whose every value is present is `REQUIRED`.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: &'static str,
    pub values: Values,
    /// Whether the column may hold nulls (kept `OPTIONAL` even when a file has none, so
    /// every night's file has the same schema).
    pub optional: bool,
}

impl Column {
    pub fn text(name: &'static str, values: impl IntoIterator<Item = String>) -> Column {
        Column { name, values: Values::Text(values.into_iter().map(Some).collect()), optional: false }
    }
    pub fn opt_text(name: &'static str, values: impl IntoIterator<Item = Option<String>>) -> Column {
        Column { name, values: Values::Text(values.into_iter().collect()), optional: true }
    }
    pub fn int(name: &'static str, values: impl IntoIterator<Item = i64>) -> Column {
        Column { name, values: Values::Int(values.into_iter().map(Some).collect()), optional: false }
    }
    pub fn opt_int(name: &'static str, values: impl IntoIterator<Item = Option<i64>>) -> Column {
        Column { name, values: Values::Int(values.into_iter().collect()), optional: true }
    }
    pub fn time(name: &'static str, values: impl IntoIterator<Item = i64>) -> Column {
        Column { name, values: Values::Time(values.into_iter().map(Some).collect()), optional: false }
    }
    pub fn opt_time(name: &'static str, values: impl IntoIterator<Item = Option<i64>>) -> Column {
        Column { name, values: Values::Time(values.into_iter().collect()), optional: true }
    }
    pub fn bool(name: &'static str, values: impl IntoIterator<Item = bool>) -> Column {
        Column { name, values: Values::Bool(values.into_iter().map(Some).collect()), optional: false }
    }

    fn schema_line(&self) -> String {
        let repetition = if self.optional { "OPTIONAL" } else { "REQUIRED" };
        let ty = match self.values {
            Values::Text(_) => "BYTE_ARRAY",
            Values::Int(_) | Values::Time(_) => "INT64",
            Values::Bool(_) => "BOOLEAN",
        };
        let logical = match self.values {
            Values::Text(_) => " (STRING)",
            Values::Time(_) => " (TIMESTAMP(MILLIS,true))",
            _ => "",
        };
        format!("  {repetition} {ty} {}{logical};\n", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("column `{name}` has {got} values, the table {want} rows")]
    Ragged { name: &'static str, got: usize, want: usize },
    #[error("column `{0}` is required but has a row without a value")]
    Missing(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How pages are compressed: zstd (what snapshots use) or not at all (the benchmark's
/// yardstick, `cargo bench -p berth-snapshot --bench write`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Codec {
    Zstd,
    None,
}

/// Write `columns` (all of one length) as a zstd-compressed Parquet file into `out`.
/// Returns the rows.
pub fn write<W: Write + Send>(out: W, columns: &[Column]) -> Result<usize, TableError> {
    write_with(out, columns, Codec::Zstd)
}

/// [`write`] with the pages compressed by `codec`.
pub fn write_with<W: Write + Send>(out: W, columns: &[Column], codec: Codec) -> Result<usize, TableError> {
    let rows = columns.first().map_or(0, |c| c.values.len());
    for c in columns {
        if c.values.len() != rows {
            return Err(TableError::Ragged { name: c.name, got: c.values.len(), want: rows });
        }
        if !c.optional && !c.values.all_present() {
            return Err(TableError::Missing(c.name));
        }
    }
    let message = format!("message snapshot {{\n{}}}", columns.iter().map(Column::schema_line).collect::<String>());
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&message)?);
    let props = WriterProperties::builder()
        .set_compression(match codec {
            Codec::Zstd => Compression::ZSTD(Default::default()),
            Codec::None => Compression::UNCOMPRESSED,
        })
        .set_created_by(format!("berth {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(out, schema, Arc::new(props))?;
    let mut start = 0;
    // An empty table still has its schema (and one empty row group none).
    while start < rows {
        let end = (start + GROUP_ROWS).min(rows);
        let mut group = writer.next_row_group()?;
        let mut i = 0;
        while let Some(mut col) = group.next_column()? {
            write_slice(&mut col, &columns[i], start..end)?;
            col.close()?;
            i += 1;
        }
        group.close()?;
        start = end;
    }
    writer.close()?;
    Ok(rows)
}

/// Definition levels (1 present, 0 null) and the present values of a slice.
fn split<T: Clone, U>(values: &[Option<T>], optional: bool, conv: impl Fn(&T) -> U) -> (Vec<U>, Option<Vec<i16>>) {
    let present = values.iter().flatten().map(conv).collect();
    let levels = optional.then(|| values.iter().map(|v| i16::from(v.is_some())).collect());
    (present, levels)
}

fn write_slice(col: &mut parquet::file::writer::SerializedColumnWriter<'_>, column: &Column, range: std::ops::Range<usize>) -> Result<(), TableError> {
    match &column.values {
        Values::Text(v) => {
            let (vals, levels) = split(&v[range], column.optional, |s: &String| ByteArray::from(s.as_str()));
            col.typed::<ByteArrayType>().write_batch(&vals, levels.as_deref(), None)?;
        }
        Values::Int(v) | Values::Time(v) => {
            let (vals, levels) = split(&v[range], column.optional, |x: &i64| *x);
            col.typed::<Int64Type>().write_batch(&vals, levels.as_deref(), None)?;
        }
        Values::Bool(v) => {
            let (vals, levels) = split(&v[range], column.optional, |x: &bool| *x);
            col.typed::<BoolType>().write_batch(&vals, levels.as_deref(), None)?;
        }
    }
    Ok(())
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    /// Unix ms.
    Time(i64),
    Bool(bool),
}

impl Value {
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) | Value::Time(v) => Some(*v),
            _ => None,
        }
    }
}

/// A row read back: column name → value, in the file's column order.
pub type Row = Vec<(String, Value)>;

/// Every row of the Parquet file at `path` (the reader snapshots' own users — the
/// fallback stock and the tests — use; other tools read the files themselves).
pub fn read(path: &Path) -> Result<Vec<Row>, TableError> {
    let reader = SerializedFileReader::new(std::fs::File::open(path)?)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        rows.push(
            row.get_column_iter()
                .map(|(name, field)| {
                    let v = match field {
                        Field::Null => Value::Null,
                        Field::Str(s) => Value::Text(s.clone()),
                        Field::Long(v) => Value::Int(*v),
                        Field::TimestampMillis(v) => Value::Time(*v),
                        Field::Bool(b) => Value::Bool(*b),
                        other => Value::Text(other.to_string()),
                    };
                    (name.clone(), v)
                })
                .collect(),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_of_every_kind_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let cols = [
            Column::text("sku", ["a".to_string(), "b".into(), "ü-€".into()]),
            Column::opt_text("variant", [Some("v".to_string()), None, Some(String::new())]),
            Column::int("qty", [0, -3, i64::MAX]),
            Column::opt_int("seq", [None, Some(7), None]),
            Column::time("at", [1_764_900_000_000, 0, 1]),
            Column::bool("ok", [true, false, true]),
        ];
        let rows = write(std::fs::File::create(&path).unwrap(), &cols).unwrap();
        assert_eq!(rows, 3);
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2][0], ("sku".into(), Value::Text("ü-€".into())));
        assert_eq!(back[1][1].1, Value::Null);
        assert_eq!(back[2][1].1, Value::Text(String::new()));
        assert_eq!(back[2][2].1, Value::Int(i64::MAX));
        assert_eq!((back[0][3].1.clone(), back[1][3].1.clone()), (Value::Null, Value::Int(7)));
        assert_eq!(back[0][4].1, Value::Time(1_764_900_000_000));
        assert_eq!(back[1][5].1, Value::Bool(false));
    }

    #[test]
    fn an_empty_table_keeps_its_schema_and_bad_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        write(std::fs::File::create(&path).unwrap(), &[Column::text("sku", Vec::<String>::new())]).unwrap();
        assert!(read(&path).unwrap().is_empty());
        let ragged = [Column::text("a", ["x".to_string()]), Column::int("b", [])];
        assert!(matches!(write(Vec::new(), &ragged), Err(TableError::Ragged { name: "b", .. })));
        let missing = [Column { name: "a", values: Values::Int(vec![None]), optional: false }];
        assert!(matches!(write(Vec::new(), &missing), Err(TableError::Missing("a"))));
    }
}
