//! `kyc-worker enqueue --from-csv FILE`: one verification per row of a CSV file.
//!
//! A batch is all or nothing by default: every row is read and checked before the first is
//! queued, so a mistake in row 900 does not leave 899 verifications started and a file half
//! done; the error names each bad row and field. `--skip-invalid` queues the valid rows and
//! lists the others. Rows are read by the `csv` crate (quoted values with commas, quotes and
//! newlines inside, a UTF-8 byte order mark), never split by hand. Each queued row's request
//! id is printed (or written with `--out`) as CSV, `row,request_id`, so a caller can join it
//! back to its file.

use std::{io::Read, path::Path};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::CliError;
use crate::{
    domain::{RequestError, RequestId, StartRequest},
    producer::{Producer, ProducerError},
};

/// Columns whose cells hold JSON (as in the intake stream).
const JSON_COLUMNS: [&str; 3] = ["contact_details", "expected_details", "metadata"];

/// What the command was asked to do with the file.
#[derive(Debug)]
pub struct BatchOptions<'a> {
    pub path: &'a Path,
    pub skip_invalid: bool,
    pub out: Option<&'a Path>,
}

/// A row that can be queued. `row` counts as a spreadsheet does: the header is row 1.
#[derive(Debug)]
struct ValidRow {
    row: u64,
    id: RequestId,
    request: StartRequest,
}

/// A row that cannot be queued, and why (the field when one is to blame). The reason never
/// repeats the cell's value.
#[derive(Debug, PartialEq, Eq)]
struct InvalidRow {
    row: u64,
    /// The file's line where the row starts (a quoted value may span lines).
    line: u64,
    field: Option<String>,
    reason: String,
}

impl std::fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "row {} (line {}): {field}: {}",
                self.row, self.line, self.reason
            ),
            None => write!(f, "row {} (line {}): {}", self.row, self.line, self.reason),
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    valid: Vec<ValidRow>,
    /// One entry per field at fault (a row may have several), in row order.
    invalid: Vec<InvalidRow>,
}

impl Batch {
    /// How many rows cannot be queued.
    fn invalid_rows(&self) -> usize {
        let mut rows: Vec<u64> = self.invalid.iter().map(|r| r.row).collect();
        rows.dedup();
        rows.len()
    }
}

/// Reads, checks and (unless a row is invalid and `skip_invalid` is off) queues the file.
pub async fn enqueue_csv(producer: &Producer, options: BatchOptions<'_>) -> Result<(), CliError> {
    let path = options.path;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let batch = read_batch(file, |request| producer.check_all(request))
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let invalid_rows = batch.invalid_rows();
    if invalid_rows > 0 && !options.skip_invalid {
        let list: Vec<String> = batch.invalid.iter().map(|r| format!("  {r}")).collect();
        return Err(CliError::Usage(format!(
            "{}: {invalid_rows} invalid row(s), nothing was enqueued (--skip-invalid enqueues \
             the valid rows):\n{}",
            path.display(),
            list.join("\n")
        )));
    }
    for row in &batch.invalid {
        eprintln!("skipped {row}");
    }

    let mut ids = csv::Writer::from_writer(match options.out {
        Some(out) => Box::new(
            std::fs::File::create(out)
                .with_context(|| format!("cannot write {}", out.display()))?,
        ) as Box<dyn std::io::Write>,
        None => Box::new(std::io::stdout()),
    });
    ids.write_record(["row", "request_id"])
        .context("cannot write the request ids")?;
    let progress = ProgressBar::new(batch.valid.len() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} rows  {per_sec}  ETA {eta}  {elapsed} elapsed",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut enqueued = 0usize;
    for row in batch.valid {
        let queued = producer.start_kyc(row.request).await;
        let id = match queued {
            Ok(id) => id,
            Err(e) => {
                progress.abandon();
                let _ = ids.flush();
                let e = match e {
                    ProducerError::Invalid(e) => CliError::Usage(format!("row {}: {e}", row.row)),
                    other => CliError::Failed(anyhow::anyhow!(
                        "row {}: {other} ({enqueued} row(s) before it were enqueued)",
                        row.row
                    )),
                };
                return Err(e);
            }
        };
        debug_assert_eq!(id, row.id);
        ids.write_record([row.row.to_string(), id.to_string()])
            .context("cannot write the request ids")?;
        enqueued += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    ids.flush().context("cannot write the request ids")?;
    if invalid_rows > 0 {
        eprintln!("enqueued {enqueued} verification(s), skipped {invalid_rows} invalid row(s)");
    } else {
        eprintln!("enqueued {enqueued} verification(s)");
    }
    Ok(())
}

/// Reads every row and checks it with `check` (the producer's checks, without queuing).
/// `Err` only when the file as a whole cannot be used (no header, an unknown column).
fn read_batch(
    input: impl Read,
    check: impl Fn(StartRequest) -> Result<(RequestId, StartRequest), Vec<RequestError>>,
) -> Result<Batch, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("cannot read the header row: {}", csv_reason(&e)))?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err("the file is empty or has no header row".to_owned());
    }
    for (i, name) in header.iter().enumerate() {
        if !StartRequest::FIELDS.contains(&name.as_str()) {
            let expected: Vec<String> = StartRequest::FIELDS
                .iter()
                .map(|f| format!("`{f}`"))
                .collect();
            // The name is the file's text: shown only as redact_values allows.
            return Err(crate::telemetry::redact_values(&format!(
                "the header row: unknown field `{name}`, expected one of {}",
                expected.join(", ")
            )));
        }
        if header[..i].contains(name) {
            return Err(format!("the header row names {name} twice"));
        }
    }
    if !header.iter().any(|h| h == "vendor_data") {
        return Err("the header row has no vendor_data column".to_owned());
    }

    let mut batch = Batch::default();
    for (i, record) in reader.records().enumerate() {
        let row = i as u64 + 2;
        let record = match record {
            Ok(record) => record,
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(format!("cannot read row {row}: {}", csv_reason(&e)));
            }
            Err(e) => {
                batch.invalid.push(InvalidRow {
                    row,
                    line: e.position().map_or(0, csv::Position::line),
                    field: None,
                    reason: csv_reason(&e),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        // A cell that cannot be read is named and left out, so the checks below still name
        // every other field at fault.
        let mut bad_cells = Vec::new();
        let mut object = Map::new();
        for (name, cell) in header.iter().zip(record.iter()) {
            if cell.is_empty() {
                continue;
            }
            match cell_value(name, cell) {
                Ok(value) => {
                    object.insert(name.clone(), value);
                }
                Err(reason) => bad_cells.push(InvalidRow {
                    row,
                    line,
                    field: Some(name.clone()),
                    reason,
                }),
            }
        }
        let checked = serde_json::from_value::<StartRequest>(Value::Object(object))
            .map_err(|e| {
                vec![InvalidRow {
                    row,
                    line,
                    field: None,
                    reason: crate::telemetry::redact_values(&e.to_string()),
                }]
            })
            .and_then(|request| {
                check(request).map_err(|errors| {
                    errors
                        .into_iter()
                        .filter(|e| {
                            !bad_cells
                                .iter()
                                .any(|b| b.field.as_deref() == Some(e.field))
                        })
                        .map(|e| InvalidRow {
                            row,
                            line,
                            field: Some(e.field.to_owned()),
                            reason: e.reason,
                        })
                        .collect()
                })
            });
        match checked {
            Ok((id, request)) if bad_cells.is_empty() => {
                batch.valid.push(ValidRow { row, id, request })
            }
            Ok(_) => batch.invalid.append(&mut bad_cells),
            Err(mut errors) => {
                batch.invalid.append(&mut bad_cells);
                batch.invalid.append(&mut errors);
            }
        }
    }
    Ok(batch)
}

/// One cell as the start request's field `name` reads it; the reason names what was
/// expected, never the cell.
fn cell_value(name: &str, cell: &str) -> Result<Value, String> {
    let value = if JSON_COLUMNS.contains(&name) {
        serde_json::from_str(cell).map_err(|_| "is not JSON".to_owned())?
    } else {
        Value::from(cell)
    };
    let mut single = Map::new();
    single.insert(name.to_owned(), value.clone());
    serde_json::from_value::<StartRequest>(Value::Object(single))
        .map(|_| value)
        .map_err(|e| crate::telemetry::redact_values(&e.to_string()))
}

/// A CSV error without the file's content.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} field(s), the header row has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not UTF-8 text", err.field() + 1)
        }
        csv::ErrorKind::Io(e) => e.to_string(),
        _ => "cannot be read as CSV".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8]) -> Result<Batch, String> {
        read_batch(text, |request| {
            request.validate_all(&crate::domain::IntakeLimits::default())
        })
    }

    #[test]
    fn quoted_values_keep_their_commas_quotes_and_newlines() {
        let batch = read(
            b"\xEF\xBB\xBFvendor_data,request_id,metadata\n\
              \"Smith, John\",q1,\"{\"\"team\"\": \"\"a,b\"\"}\"\n\
              \n\
              u-2,q2,\"{\n\"\"lines\"\": 2\n}\"\n\
              \"two\nlines\",q3,\n\n",
        )
        .expect("readable");
        let rows: Vec<(u64, &str, &str)> = batch
            .valid
            .iter()
            .map(|r| (r.row, r.request.vendor_data.as_str(), r.id.as_str()))
            .collect();
        assert_eq!(rows, vec![(2, "Smith, John", "q1"), (3, "u-2", "q2")]);
        assert_eq!(
            batch.valid[0].request.metadata,
            Some(serde_json::json!({"team": "a,b"}))
        );
        assert_eq!(
            batch.valid[1].request.metadata,
            Some(serde_json::json!({"lines": 2}))
        );
        // The newline survives the CSV reader, and the intake's rules refuse it in a
        // vendor_data (no control characters).
        let named: Vec<(u64, Option<&str>)> = batch
            .invalid
            .iter()
            .map(|r| (r.row, r.field.as_deref()))
            .collect();
        assert_eq!(named, vec![(4, Some("vendor_data"))]);
    }

    #[test]
    fn every_bad_row_and_field_is_named_and_no_value_repeated() {
        let batch = read(
            b"vendor_data,workflow_id,metadata,language\n\
              u-1,,,\n\
              ,,,\n\
              u-3,Jane-Doe,[1],english please\n\
              u-4,only three\n\
              u-5,,\"{\"\"a\"\": 1}\",en\n",
        )
        .expect("readable");
        let rows: Vec<u64> = batch.valid.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![2, 6]);
        assert_eq!(batch.invalid_rows(), 3);
        let named: Vec<(u64, Option<&str>)> = batch
            .invalid
            .iter()
            .map(|r| (r.row, r.field.as_deref()))
            .collect();
        assert_eq!(
            named,
            vec![
                (3, Some("vendor_data")),
                (4, Some("workflow_id")),
                (4, Some("language")),
                (4, Some("metadata")),
                (5, None),
            ]
        );
        let text: Vec<String> = batch.invalid.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("row 3 (line 3): vendor_data: is required"),
            "{text:?}"
        );
        assert!(text.iter().all(|t| !t.contains("Jane")), "{text:?}");
        assert!(
            text[4].contains("has 2 field(s), the header row has 4"),
            "{text:?}"
        );
    }

    #[test]
    fn a_bad_header_refuses_the_file_naming_the_column() {
        let e = read(b"vendor_data,vendr\nu-1,x\n").expect_err("unknown column");
        assert!(
            e.starts_with("the header row: unknown field `vendr`, expected one of `request_id`"),
            "{e}"
        );
        let e = read(b"request_id\nr-1\n").expect_err("no vendor_data");
        assert!(e.contains("no vendor_data column"), "{e}");
        let e = read(b"").expect_err("empty");
        assert!(e.contains("empty"), "{e}");
        let e = read(b"vendor_data,vendor_data\nu,u\n").expect_err("twice");
        assert!(e.contains("twice"), "{e}");
    }
}
