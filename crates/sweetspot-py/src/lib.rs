//! sweetspot for Python: the native module `sweetspot._native` of the wheel that maturin builds
//! (the Python package around it is `python/sweetspot/`; docs/python.md is the user's guide).
//!
//! - `main(argv)`: the `sweetspot` command, the same code as the binary (`sweetspot_cli::run_from`).
//! - `pairs` and `stats`: the pairs stage and the pool statistics on a table handed over through
//!   the Arrow PyCapsule interface (`__arrow_c_stream__`), or on a file.
//!
//! Arrow crosses the boundary through the C stream interface of the workspace's own arrow-rs
//! (`arrow_array::ffi_stream`), not `pyo3-arrow`: every `pyo3-arrow` release pins an arrow major,
//! and none pins the workspace's (60). The interface is the same C structs either way.
//!
//! Copies: an imported table's buffers are the producer's (no copy; `buffer_addresses` lets a
//! test check it). The pairs stage then reads its input as it reads a Parquet file, every row
//! through the CLI's one row parser with its checks and messages, so the table is written once to
//! a temporary Parquet file; its output datasets are read back from Parquet into Arrow memory
//! that Rust owns and hands to Python without a copy ([`ArrowStream`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{Array, RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::SchemaRef;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

// No mimalloc here (the binary's global allocator): a module is loaded with `dlopen`, where
// mimalloc's initial-exec thread-local storage fails ("cannot allocate memory in static TLS
// block"). The system allocator serves the module.

pyo3::create_exception!(
    sweetspot,
    SweetspotError,
    PyException,
    "An error of sweetspot: the message the command line prints (file, row, field or recipe \
     key), with the command's exit code as `exit_code`."
);

const STREAM: &std::ffi::CStr = c"arrow_array_stream";

/// A value that is moved into a closure run without the GIL on the same thread. The C stream's
/// callbacks may run on any thread (the interface asks nothing of threads, and pyarrow takes the
/// GIL itself where it calls Python).
struct AssertSend<T>(T);
// SAFETY: see above; the value never leaves the calling thread in this crate.
unsafe impl<T> Send for AssertSend<T> {}

/// An exported stream owned by a capsule; `pointer` is the struct itself (`repr(transparent)`).
#[repr(transparent)]
struct CapsuleStream(FFI_ArrowArrayStream);
// SAFETY: an `FFI_ArrowArrayStream` made by `FFI_ArrowArrayStream::new` owns a `Send` reader.
unsafe impl Send for CapsuleStream {}

fn error(message: String, code: u8) -> PyErr {
    let err = SweetspotError::new_err(message);
    Python::attach(|py| {
        let _ = err.value(py).setattr("exit_code", code);
    });
    err
}

/// The stream a producer exports through `__arrow_c_stream__`, imported without a copy.
fn import_stream(obj: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    if !obj.hasattr("__arrow_c_stream__")? {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "a {kind} is not a table: give a path, or an object with `__arrow_c_stream__` \
             (a pyarrow Table or RecordBatchReader, a polars or pandas DataFrame)"
        )));
    }
    let capsule = obj.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let ptr = capsule.pointer_checked(Some(STREAM))?;
    // SAFETY: a capsule named `arrow_array_stream` holds an `ArrowArrayStream` (the PyCapsule
    // interface); `from_raw` moves it out and leaves a released one for the capsule to drop.
    let stream = unsafe { FFI_ArrowArrayStream::from_raw(ptr.as_ptr().cast()) };
    RecordBatchStreamReader::try_new(stream)
        .map_err(|e| error(format!("cannot import the table: {e}"), 2))
}

/// The addresses of an array's buffers: validity first, then its buffers, then its children's,
/// depth first (the order of pyarrow's `Array.buffers()`); 0 for an absent validity bitmap.
fn addresses(array: &arrow_array::ArrayRef) -> Vec<usize> {
    fn visit(d: &arrow_data::ArrayData, out: &mut Vec<usize>) {
        out.push(d.nulls().map_or(0, |n| n.buffer().as_ptr() as usize));
        for b in d.buffers() {
            out.push(b.as_ptr() as usize);
        }
        for c in d.child_data() {
            visit(c, out);
        }
    }
    let mut out = Vec::new();
    visit(&array.to_data(), &mut out);
    out
}

/// For each column of a table (given as for `pairs`), the addresses of its buffers in each
/// record batch as sweetspot imported them: equal to the producer's own when the hand-off copied
/// nothing. A test hook of the zero-copy promise; `sweetspot.pairs` does not need it.
#[pyfunction]
fn buffer_addresses<'py>(
    py: Python<'py>,
    scored: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let reader = import_stream(scored)?;
    let schema = reader.schema();
    let out = PyDict::new(py);
    let mut columns: Vec<Vec<Vec<usize>>> = vec![Vec::new(); schema.fields().len()];
    for batch in reader {
        let batch = batch.map_err(|e| error(format!("cannot import the table: {e}"), 2))?;
        for (i, c) in batch.columns().iter().enumerate() {
            columns[i].push(addresses(c));
        }
    }
    for (f, a) in schema.fields().iter().zip(columns) {
        out.set_item(f.name(), a)?;
    }
    Ok(out)
}

/// A table that Rust owns, handed to Python through `__arrow_c_stream__` (no copy: pyarrow's
/// `pa.table(stream)` wraps these buffers). It can be exported any number of times.
#[pyclass(module = "sweetspot._native", frozen)]
struct ArrowStream {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

#[pymethods]
impl ArrowStream {
    /// The Arrow PyCapsule interface. `requested_schema` is accepted and ignored (allowed by
    /// the interface): the table has one schema.
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let reader = RecordBatchIterator::new(
            self.batches.clone().into_iter().map(Ok),
            self.schema.clone(),
        );
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, CapsuleStream(stream), STREAM)
    }

    /// For each column, the addresses of its buffers in each record batch (see
    /// [`buffer_addresses`]): a test compares them with the pyarrow table's.
    fn buffer_addresses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (i, f) in self.schema.fields().iter().enumerate() {
            let per_batch: Vec<Vec<usize>> = self
                .batches
                .iter()
                .map(|b| addresses(b.column(i)))
                .collect();
            out.set_item(f.name(), per_batch)?;
        }
        Ok(out)
    }

    /// Rows, over every batch.
    fn __len__(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Reads a Parquet file that sweetspot wrote into Arrow memory.
fn read_parquet(path: &Path) -> Result<ArrowStream, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ArrowStream { schema, batches })
}

/// What a command reads: a path as given, or a table written to `<dir>/scored.parquet` (the
/// stage reads a table as it reads a Parquet file; see the crate's documentation). Returns the
/// path and, for a table, the label that replaces the temporary path in messages.
fn input_path(
    py: Python<'_>,
    scored: &Bound<'_, PyAny>,
    dir: &Path,
) -> PyResult<(PathBuf, Option<String>)> {
    if let Ok(path) = scored.extract::<PathBuf>() {
        return Ok((path, None));
    }
    let reader = AssertSend(import_stream(scored)?);
    let target = dir.join("scored.parquet");
    let t = target.clone();
    py.detach(move || {
        let reader = reader;
        let reader = reader.0;
        let file = std::fs::File::create(&t).map_err(|e| e.to_string())?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, reader.schema(), None)
            .map_err(|e| e.to_string())?;
        for batch in reader {
            w.write(&batch.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        w.close().map(|_| ()).map_err(|e| e.to_string())
    })
    .map_err(|e| error(format!("cannot read the table: {e}"), 2))?;
    Ok((target, Some("the scored table".into())))
}

/// A message with the temporary input's path replaced by `label`: the Parquet reader's
/// `<path>:<row>:` becomes `<label>: row <row>:`, and the path elsewhere `label`.
fn relabel(message: String, input: &Path, label: &Option<String>) -> String {
    let Some(label) = label else {
        return message;
    };
    let path = input.display().to_string();
    let needle = format!("{path}:");
    let mut out = String::new();
    let mut rest = message.as_str();
    while let Some(i) = rest.find(&needle) {
        out.push_str(&rest[..i]);
        let after = &rest[i + needle.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(':') {
            out.push_str(&format!("{label}: row {}", &after[..digits]));
            rest = &after[digits..];
        } else {
            out.push_str(label);
            out.push(':');
            rest = after;
        }
    }
    out.push_str(rest);
    out.replace(&path, label)
}

/// The name of the recipe `pairs` makes from its arguments, in messages.
const ORIGIN: &str = "<sweetspot.pairs arguments>";

/// A recipe error without the line and column of the recipe `pairs` made (the caller never saw
/// it): `<origin>:3:1: key ...` becomes `sweetspot.pairs: key ...`.
fn strip_origin(message: String) -> String {
    let needle = format!("{ORIGIN}:");
    let mut out = String::new();
    let mut rest = message.as_str();
    while let Some(i) = rest.find(&needle) {
        out.push_str(&rest[..i]);
        out.push_str("sweetspot.pairs:");
        rest = &rest[i + needle.len()..];
        // `line:column:`, when there.
        for _ in 0..2 {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[digits..].starts_with(':') {
                rest = &rest[digits + 1..];
            }
        }
    }
    out.push_str(rest);
    out.replace(ORIGIN, "sweetspot.pairs")
}

/// The `sweetspot` command on `argv` (`sys.argv`: the first item is the program's name);
/// returns the exit code. Runs without the GIL.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(move || sweetspot_cli::run_from(argv))
}

/// The pairs stage (see `sweetspot.pairs`): `pairs` is the recipe's `[pairs]` table and `run`
/// its `[run]` table, as JSON, without `input`, `output` and `format`. Returns each dataset's
/// table by name, and the stage's summary as JSON.
#[pyfunction]
#[pyo3(signature = (scored, run, pairs, quiet = true))]
fn pairs<'py>(
    py: Python<'py>,
    scored: &Bound<'py, PyAny>,
    run: &str,
    pairs: &str,
    quiet: bool,
) -> PyResult<(Bound<'py, PyDict>, String)> {
    let dir = tempfile::Builder::new()
        .prefix("sweetspot-pairs-")
        .tempdir()
        .map_err(|e| error(format!("cannot make a temporary folder: {e}"), 1))?;
    let (input, label) = input_path(py, scored, dir.path())?;
    let table = |json: &str, what: &str| -> PyResult<toml::Table> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| error(format!("{what}: not JSON: {e}"), 2))?;
        toml::Table::try_from(v).map_err(|e| error(format!("{what}: {e}"), 2))
    };
    let mut p = table(pairs, "pairs")?;
    let out = dir.path().join("out");
    let abs = std::path::absolute(&input).unwrap_or_else(|_| input.clone());
    p.insert(
        "input".into(),
        toml::Value::String(abs.to_string_lossy().into_owned()),
    );
    p.insert(
        "output".into(),
        toml::Value::String(out.to_string_lossy().into_owned()),
    );
    p.insert("format".into(), toml::Value::String("parquet".into()));
    let mut root = toml::Table::new();
    root.insert("run".into(), toml::Value::Table(table(run, "run")?));
    root.insert("pairs".into(), toml::Value::Table(p));
    let text = toml::to_string(&root).map_err(|e| error(e.to_string(), 2))?;
    let origin = PathBuf::from(ORIGIN);
    let summary = py
        .detach(|| sweetspot_cli::pairs_from_toml(&text, &origin, PathBuf::from("."), quiet))
        .map_err(|(m, code)| error(relabel(strip_origin(m), &abs, &label), code))?;
    let tables = PyDict::new(py);
    for d in &summary.datasets {
        let stream = py
            .detach(|| read_parquet(&d.file))
            .map_err(|m| error(format!("cannot read back a dataset: {m}"), 1))?;
        tables.set_item(&d.name, Bound::new(py, stream)?)?;
    }
    let json = serde_json::to_string(&summary).map_err(|e| error(e.to_string(), 1))?;
    Ok((tables, relabel(json, &abs, &label)))
}

/// The pool statistics of `sweetspot stats` for one input, as JSON.
#[pyfunction]
#[pyo3(signature = (scored, input_layout = "auto", n = None))]
fn stats(
    py: Python<'_>,
    scored: &Bound<'_, PyAny>,
    input_layout: &str,
    n: Option<usize>,
) -> PyResult<String> {
    let layout: sweetspot_core::recipe::InputLayout =
        serde_json::from_value(serde_json::Value::String(input_layout.into())).map_err(|_| {
            error(
                format!("input_layout `{input_layout}`: give auto, long or grouped"),
                2,
            )
        })?;
    let dir = tempfile::Builder::new()
        .prefix("sweetspot-stats-")
        .tempdir()
        .map_err(|e| error(format!("cannot make a temporary folder: {e}"), 1))?;
    let (input, label) = input_path(py, scored, dir.path())?;
    let s = py
        .detach(|| sweetspot_runner::dataset_stats(&input, layout, n))
        .map_err(|e| error(relabel(e.to_string(), &input, &label), e.exit_code()))?;
    let json = serde_json::to_string(&s).map_err(|e| error(e.to_string(), 1))?;
    Ok(relabel(json, &input, &label))
}

/// Adds sweetspot's functions and classes to `m`. A plugin author's own module calls this from
/// its `#[pymodule]`, after linking their plugin crate (docs/python.md).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    sweetspot_cli::link_builtin_plugins();
    m.add("SweetspotError", m.py().get_type::<SweetspotError>())?;
    m.add_class::<ArrowStream>()?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(pairs, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_addresses, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// The wheel's native module.
#[cfg(feature = "module")]
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    register(m)
}
