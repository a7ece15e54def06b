//! Reading rows from a CSV file, CSV on stdin, or a SQLite table, streamed
//! through a bounded channel so memory never grows with the number of rows.
//! A source that cannot be read at all is a [`SourceError`]; a row that is
//! merely bad (ragged, not UTF-8) is passed on with its problem attached, so
//! it becomes an `invalid` audit row and the others go on.

use crate::edit::{Columns, Op, Row};
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Column, ConnectOptions, Row as _, TypeInfo, ValueRef};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Where a batch's rows come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Csv(PathBuf),
    Stdin,
    Sqlite { path: PathBuf, table: String },
}

/// The source cannot be read: exit 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// What a non-UTF-8 byte in a CSV source says.
const NOT_UTF8: &str = "bytes that are not UTF-8, so the file is in another encoding (Excel's CSV export is often windows-1252); nothing was sent. Pass --encoding windows-1252 (or the file's encoding), or convert it: iconv -f WINDOWS-1252 -t UTF-8 in.csv > out.csv";

impl Source {
    /// Recognises `-`, a SQLite file (by its magic bytes), or else a CSV path.
    pub fn from_arg(arg: &str, table: Option<&str>) -> Result<Source, SourceError> {
        if arg == "-" {
            if table.is_some() {
                return Err(SourceError(
                    "--table goes with a SQLite source, not stdin".into(),
                ));
            }
            return Ok(Source::Stdin);
        }
        let path = PathBuf::from(arg);
        let meta = std::fs::metadata(&path)
            .map_err(|e| SourceError(format!("cannot read source {arg}: {}", io_reason(&e))))?;
        if meta.is_dir() {
            return Err(SourceError(format!(
                "source {arg} is a directory; give a .csv file, - for stdin, or a SQLite file"
            )));
        }
        let mut magic = [0u8; 16];
        let read = std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok();
        let is_sqlite = read && magic == SQLITE_MAGIC;
        if read && (magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"\xD0\xCF\x11\xE0")) {
            return Err(SourceError(format!(
                "source {arg} is an Excel workbook, not CSV; in Excel use File > Save As > CSV UTF-8 (Comma delimited), then run that file"
            )));
        }
        if is_sqlite {
            return Ok(Source::Sqlite {
                path,
                table: table.unwrap_or("edits").to_owned(),
            });
        }
        if table.is_some() {
            return Err(SourceError(format!(
                "source {arg} is not a SQLite database, but --table was given"
            )));
        }
        Ok(Source::Csv(path))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Csv(_) => "csv",
            Source::Stdin => "stdin",
            Source::Sqlite { .. } => "sqlite",
        }
    }

    /// The path as recorded in the audit database (`-` for stdin).
    pub fn location(&self) -> String {
        match self {
            Source::Csv(p) | Source::Sqlite { path: p, .. } => p.display().to_string(),
            Source::Stdin => "-".into(),
        }
    }

    pub fn table(&self) -> Option<&str> {
        match self {
            Source::Sqlite { table, .. } => Some(table),
            _ => None,
        }
    }

    /// A short name for default batch names: the file stem.
    pub fn stem(&self) -> String {
        match self {
            Source::Stdin => "stdin".into(),
            Source::Csv(p) | Source::Sqlite { path: p, .. } => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "batch".into()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Sqlite { path, table } => write!(f, "{} (table {table})", path.display()),
            other => f.write_str(&other.location()),
        }
    }
}

/// An open source: its header, understood, and a stream of rows.
pub struct Reader {
    pub columns: Columns,
    pub rows: mpsc::Receiver<Result<Row, SourceError>>,
}

const CHANNEL: usize = 1024;

/// How a CSV source is written: `--delimiter` and `--encoding`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CsvFormat {
    /// `None`: found from the header line (comma, semicolon or tab).
    pub delimiter: Option<u8>,
    /// `None`: UTF-8 (with or without a BOM).
    pub encoding: Option<&'static encoding_rs::Encoding>,
}

/// `--encoding`: any WHATWG label (`windows-1252`, `latin1`, `utf-16le`, ...).
pub fn parse_encoding(label: &str) -> Result<&'static encoding_rs::Encoding, String> {
    encoding_rs::Encoding::for_label(label.trim().as_bytes()).ok_or_else(|| {
        format!("{label:?} is not an encoding convoy knows; write utf-8, windows-1252 or latin1, for example")
    })
}

/// `--delimiter`: one ASCII character, or `tab`.
pub fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() && s != "\"" && s != "\n" => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a delimiter; write one character like ';' or ',', or tab"
        )),
    }
}

/// Opens a source and starts streaming its rows.
pub async fn open(
    source: &Source,
    default_op: Option<Op>,
    format: CsvFormat,
) -> Result<Reader, SourceError> {
    match source {
        Source::Csv(path) => {
            let file = std::fs::File::open(path).map_err(|e| {
                SourceError(format!(
                    "cannot read source {}: {}",
                    path.display(),
                    io_reason(&e)
                ))
            })?;
            open_csv(Box::new(file), default_op, format).await
        }
        Source::Stdin => open_csv(Box::new(std::io::stdin()), default_op, format).await,
        Source::Sqlite { path, table } => open_sqlite(path, table, default_op).await,
    }
}

/// The delimiter the header line uses most: comma, semicolon or tab.
fn sniff_delimiter(input: &mut impl std::io::BufRead) -> u8 {
    let head = input.fill_buf().unwrap_or(&[]);
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let count = |d: u8| line.iter().filter(|b| **b == d).count();
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| (count(*d), *d == b','))
        .unwrap_or(b',')
}

async fn open_csv(
    input: Box<dyn Read + Send>,
    default_op: Option<Op>,
    format: CsvFormat,
) -> Result<Reader, SourceError> {
    let (header_tx, header_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::task::spawn_blocking(move || {
        let input: Box<dyn Read + Send> = match format.encoding {
            // Transcoded to UTF-8 as it is read (a BOM, if any, wins).
            Some(enc) if enc != encoding_rs::UTF_8 => Box::new(
                encoding_rs_io::DecodeReaderBytesBuilder::new()
                    .encoding(Some(enc))
                    .build(input),
            ),
            _ => input,
        };
        let mut input = std::io::BufReader::with_capacity(1 << 16, input);
        let delimiter = format
            .delimiter
            .unwrap_or_else(|| sniff_delimiter(&mut input));
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(QuoteCounter {
                inner: input,
                quotes: 0,
            });
        let header = match rdr.byte_headers() {
            Ok(h) if h.is_empty() || (h.len() == 1 && h[0].is_empty()) => Err(SourceError(
                "the source is empty; it needs a header row naming the columns".into(),
            )),
            Ok(h) => h
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let name = if i == 0 {
                        name.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(name)
                    } else {
                        name
                    };
                    std::str::from_utf8(name)
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| {
                            SourceError(format!("line 1, header column {}: {}", i + 1, NOT_UTF8))
                        })
                })
                .collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(SourceError(format!("the source is not readable CSV: {e}"))),
        };
        let names = header.as_ref().map(Vec::clone).unwrap_or_default();
        let width = names.len();
        if header_tx.send(header).is_err() || width == 0 {
            return;
        }
        let mut record = csv::ByteRecord::new();
        let mut number = 0u64;
        // Each row is sent once the next is read, so that the last one can
        // still be marked if the file ends inside a quoted field.
        let mut held: Option<(Row, bool)> = None;
        loop {
            match rdr.read_byte_record(&mut record) {
                Ok(false) => {
                    if let Some((mut row, multiline)) = held.take() {
                        if rdr.get_ref().quotes % 2 == 1 && multiline && row.problem.is_none() {
                            row.problem = Some((
                                None,
                                "has an unclosed quote that runs to the end of the file, swallowing the rows after it; close the quote".into(),
                            ));
                        }
                        let _ = tx.blocking_send(Ok(row));
                    }
                    break;
                }
                Ok(true) => {
                    number += 1;
                    let multiline = record.iter().any(|f| f.contains(&b'\n'));
                    if let Some(i) = record.iter().position(|f| std::str::from_utf8(f).is_err()) {
                        // The encoding is the file's, not the row's: refuse it all
                        // (after the row held back, so every row before it is seen).
                        if let Some((prev, _)) = held.take()
                            && tx.blocking_send(Ok(prev)).is_err()
                        {
                            return;
                        }
                        let line = record.position().map_or(number + 1, |p| p.line());
                        let _ = tx.blocking_send(Err(SourceError(format!(
                            "line {line} (data row {number}), column {}: {NOT_UTF8}",
                            names
                                .get(i)
                                .map_or_else(|| format!("#{}", i + 1), |n| n.clone()),
                        ))));
                        return;
                    }
                    let row = csv_row(number, &record, width);
                    if let Some((prev, _)) = held.replace((row, multiline))
                        && tx.blocking_send(Ok(prev)).is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(SourceError(format!(
                        "the source stopped being readable CSV after data row {number}: {e}"
                    ))));
                    return;
                }
            }
        }
    });
    let names = header_rx
        .await
        .map_err(|_| SourceError("the CSV reader stopped unexpectedly".into()))??;
    let columns = Columns::from_header(names, default_op).map_err(SourceError)?;
    Ok(Reader { columns, rows: rx })
}

/// Counts the `"` bytes read: in well-formed CSV there is an even number of
/// them, so an odd count at the end means a quote was never closed.
struct QuoteCounter<R> {
    inner: R,
    quotes: u64,
}

impl<R: Read> Read for QuoteCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.quotes += buf[..n].iter().filter(|b| **b == b'"').count() as u64;
        Ok(n)
    }
}

fn csv_row(number: u64, record: &csv::ByteRecord, width: usize) -> Row {
    let mut row = Row {
        number,
        cells: Vec::with_capacity(width),
        problem: None,
    };
    if record.len() != width {
        row.problem = Some((
            None,
            format!(
                "has {} fields but the header has {width}; check for a missing or extra comma, or an unclosed quote",
                record.len()
            ),
        ));
        return row;
    }
    for field in record.iter() {
        // Checked by the caller: every field is UTF-8.
        let s = String::from_utf8_lossy(field);
        row.cells.push((!s.is_empty()).then(|| s.into_owned()));
    }
    row
}

async fn open_sqlite(
    path: &Path,
    table: &str,
    default_op: Option<Op>,
) -> Result<Reader, SourceError> {
    let shown = path.display().to_string();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| SourceError(format!("cannot open SQLite source {shown}: {e}")))?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| SourceError(format!("{shown} is not a readable SQLite database: {e}")))?;
    if names.is_empty() {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        return Err(SourceError(format!(
            "{shown} has no table {table:?}; pass --table NAME (tables there: {})",
            if tables.is_empty() {
                "none".to_owned()
            } else {
                tables.join(", ")
            }
        )));
    }
    let columns = Columns::from_header(names.clone(), default_op).map_err(SourceError)?;
    // The name is checked to exist above and quoted here; it is never otherwise spliced into SQL.
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let with_rowid = format!("SELECT rowid AS \"__convoy_rowid\", * FROM {quoted} ORDER BY rowid");
    let has_rowid = sqlx::query(sqlx::AssertSqlSafe(format!("{with_rowid} LIMIT 0")))
        .fetch_all(&mut conn)
        .await
        .is_ok()
        && !names.iter().any(|n| n == "__convoy_rowid");
    let sql = if has_rowid {
        with_rowid
    } else {
        format!("SELECT * FROM {quoted}")
    };
    let width = names.len();
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut conn);
        let mut counter = 0u64;
        loop {
            match stream.try_next().await {
                Ok(Some(r)) => {
                    counter += 1;
                    let row = sqlite_row(&r, has_rowid, counter, width);
                    if tx.send(Ok(row)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx
                        .send(Err(SourceError(format!(
                            "reading the SQLite source failed after row {counter}: {e}"
                        ))))
                        .await;
                    return;
                }
            }
        }
    });
    Ok(Reader { columns, rows: rx })
}

fn sqlite_row(r: &SqliteRow, has_rowid: bool, counter: u64, width: usize) -> Row {
    let offset = usize::from(has_rowid);
    let number = if has_rowid {
        r.try_get::<i64, _>(0).map(|n| n as u64).unwrap_or(counter)
    } else {
        counter
    };
    let mut row = Row {
        number,
        cells: Vec::with_capacity(width),
        problem: None,
    };
    for i in offset..offset + width {
        let value = r.try_get_raw(i).ok();
        let ty = value
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| v.type_info().name().to_owned());
        let text = match ty.as_deref() {
            None => None,
            Some("INTEGER") => r.try_get::<i64, _>(i).ok().map(|n| n.to_string()),
            Some("REAL") => r.try_get::<f64, _>(i).ok().map(|n| n.to_string()),
            Some("TEXT") => r.try_get::<String, _>(i).ok(),
            Some(_) => match r.try_get::<Vec<u8>, _>(i).map(String::from_utf8) {
                Ok(Ok(s)) => Some(s),
                _ => {
                    row.problem = Some((
                        Some(r.columns()[i].name().to_owned()),
                        "holds bytes that are not UTF-8 text".into(),
                    ));
                    None
                }
            },
        };
        row.cells.push(text.filter(|s| !s.is_empty()));
    }
    row
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
