//! Query vector files: `.npy` (float32 or float64, `[D]` or `[Q, D]`) and JSON (an array
//! of numbers, or an array of arrays of numbers).
//!
//! Every reader returns `(rows, dim, data)` with `data` holding `rows × dim` finite `f32`
//! values in row-major order. Errors name the file and, for bad values, the row and the
//! position in it, both counted from 1.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use npyz::WriterBuilder;

use crate::{Error, Result};

/// Reads query vectors from `path`, choosing the format by extension: `.npy` or `.json`
/// (case-insensitive). The path `-` reads JSON from standard input.
///
/// Fails with [`Error::InvalidInput`] for an unknown extension, an empty file, ragged
/// rows, non-numbers, values that are not finite as `f32`, a dtype other than float32 or
/// float64, or an array of more than two dimensions; [`Error::Io`] when the file cannot be
/// read; [`Error::Corrupt`] for a truncated or malformed `.npy`.
pub fn read_vectors(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    if path.as_os_str() == "-" {
        return read_vectors_reader("-", std::io::stdin().lock());
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("npy") => read_npy(path),
        Some("json") => {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            read_vectors_reader(&path.display().to_string(), BufReader::new(f))
        }
        _ => Err(Error::invalid(
            path.display().to_string(),
            "unknown vector file type; expected a .npy or .json file (or - for JSON on stdin)",
        )),
    }
}

/// Reads JSON query vectors from `r`; `name` names the source in errors (`-` for stdin).
///
/// Accepts `[0.1, 0.2, …]` (one vector) or `[[…], […], …]` (one per row).
pub fn read_vectors_reader(name: &str, r: impl Read) -> Result<(usize, usize, Vec<f32>)> {
    let v: serde_json::Value = serde_json::from_reader(r)
        .map_err(|e| Error::invalid(name, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Array(items) = v else {
        return Err(Error::invalid(
            name,
            "expected a JSON array of numbers or an array of arrays of numbers",
        ));
    };
    if items.is_empty() {
        return Err(Error::invalid(name, "the array is empty; no vectors"));
    }
    let nested = matches!(items.first(), Some(serde_json::Value::Array(_)));
    if !nested {
        let data = json_row(name, None, &items)?;
        return Ok((1, data.len(), data));
    }
    let mut dim = None;
    let mut data = Vec::new();
    for (r, item) in items.iter().enumerate() {
        let serde_json::Value::Array(row) = item else {
            return Err(Error::invalid(
                format!("{name} row {} (1-based)", r + 1),
                format!("expected an array of numbers, found {}", json_kind(item)),
            ));
        };
        let values = json_row(name, Some(r), row)?;
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => {
                return Err(Error::invalid(
                    format!("{name} row {} (1-based)", r + 1),
                    format!("has {} values but row 1 has {d} (rows must all be the same length)", values.len()),
                ))
            }
            Some(_) => {}
        }
        data.extend(values);
    }
    Ok((items.len(), dim.unwrap_or(0), data))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_row(name: &str, row: Option<usize>, items: &[serde_json::Value]) -> Result<Vec<f32>> {
    let at = || match row {
        Some(r) => format!("{name} row {} (1-based)", r + 1),
        None => name.to_owned(),
    };
    if items.is_empty() {
        return Err(Error::invalid(at(), "empty vector"));
    }
    items
        .iter()
        .enumerate()
        .map(|(k, v)| {
            #[allow(clippy::cast_possible_truncation)]
            let x = v.as_f64().map(|x| x as f32);
            match x {
                Some(x) if x.is_finite() => Ok(x),
                Some(_) => Err(Error::invalid(
                    at(),
                    format!("value {} (1-based) is {v}, outside the f32 range", k + 1),
                )),
                None => Err(Error::invalid(
                    at(),
                    format!("value {} (1-based) is {}, not a number", k + 1, json_kind(v)),
                )),
            }
        })
        .collect()
}

fn read_npy(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let at = path.display().to_string();
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let npy = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| corrupt(format!("not a readable .npy file ({e})")))?;
    let (rows, dim) = match npy.shape() {
        [d] => (1, *d),
        [q, d] => (*q, *d),
        s => {
            return Err(Error::invalid(
                at,
                format!("array has shape {s:?}; expected [D] or [Q, D]"),
            ))
        }
    };
    if rows == 0 || dim == 0 {
        return Err(Error::invalid(at, format!("array has shape {:?}; no vectors", npy.shape())));
    }
    let dtype = npy.dtype();
    let width: u64 = match &dtype {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && matches!(t.size_field(), 4 | 8) => {
            t.size_field()
        }
        _ => {
            return Err(Error::invalid(
                at,
                format!("array dtype is {}; expected float32 ('<f4') or float64 ('<f8')", dtype.descr()),
            ))
        }
    };
    let descr = dtype.descr();
    // Refuse a header that promises more data than the file holds before allocating.
    let needed = rows.checked_mul(dim).and_then(|n| n.checked_mul(width));
    if needed.is_none_or(|n| n > file_len) {
        return Err(corrupt(format!(
            "header declares shape {:?} of {descr}, more than the file's {file_len} bytes hold (truncated?)",
            npy.shape()
        )));
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let values: Vec<f32> = if width == 4 {
        npy.into_vec::<f32>().map_err(|e| corrupt(format!("reading values: {e}")))?
    } else {
        let v = npy.into_vec::<f64>().map_err(|e| corrupt(format!("reading values: {e}")))?;
        #[allow(clippy::cast_possible_truncation)]
        v.into_iter().map(|x| x as f32).collect()
    };
    let (rows, dim) = (
        usize::try_from(rows).map_err(|_| corrupt("too many rows".into()))?,
        usize::try_from(dim).map_err(|_| corrupt("dimension too large".into()))?,
    );
    if Some(values.len()) != rows.checked_mul(dim) {
        return Err(corrupt(format!("expected {rows}×{dim} values, read {}", values.len())));
    }
    let data = if fortran && rows > 1 {
        // Column-major: element (r, c) is at c * rows + r.
        let mut out = Vec::with_capacity(values.len());
        for r in 0..rows {
            for c in 0..dim {
                out.push(values.get(c * rows + r).copied().unwrap_or(f32::NAN));
            }
        }
        out
    } else {
        values
    };
    if let Some(k) = data.iter().position(|x| !x.is_finite()) {
        let (r, c) = (k / dim, k % dim);
        return Err(Error::invalid(
            format!("{at} row {} (1-based)", r + 1),
            format!(
                "value {} (1-based) is {}, not a finite number",
                c + 1,
                data.get(k).copied().unwrap_or(f32::NAN)
            ),
        ));
    }
    Ok((rows, dim, data))
}

/// Writes `rows × dim` row-major `data` to `path` as a 2-D little-endian float32 `.npy`
/// array of shape `[rows, dim]`, which NumPy reads with `np.load`.
pub fn write_npy(path: &Path, rows: usize, dim: usize, data: &[f32]) -> Result<()> {
    if rows.checked_mul(dim) != Some(data.len()) {
        return Err(Error::invalid(
            path.display().to_string(),
            format!("{} values do not make {rows} rows of {dim}", data.len()),
        ));
    }
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(f);
    let mut npy = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[rows as u64, dim as u64])
        .writer(&mut w)
        .begin_nd()
        .map_err(|e| Error::io(path, e))?;
    npy.extend(data.iter().copied()).map_err(|e| Error::io(path, e))?;
    npy.finish().map_err(|e| Error::io(path, e))?;
    w.flush().map_err(|e| Error::io(path, e))?;
    w.into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_text(r: Result<(usize, usize, Vec<f32>)>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn npy_round_trip_keeps_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npy(&p, 3, 4, &data).unwrap();
        let (r, d, v) = read_vectors(&p).unwrap();
        assert_eq!((r, d), (3, 4));
        assert_eq!(v, data);
    }

    #[test]
    fn npy_f64_one_dimensional_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        // f64, shape [3]
        let p = dir.path().join("one.npy");
        let mut w = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&[3])
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.0f64, 2.5, -3.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_vectors(&p).unwrap(), (1, 3, vec![1.0, 2.5, -3.0]));

        // f32 Fortran order, logical [[1,2,3],[4,5,6]] stored column by column.
        let p = dir.path().join("f.npy");
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[2, 3])
            .order(npyz::Order::Fortran)
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_vectors(&p).unwrap(), (2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    }

    #[test]
    fn npy_with_nan_names_file_row_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nan.npy");
        write_npy(&p, 2, 2, &[1.0, 2.0, 3.0, f32::NAN]).unwrap();
        let e = err_text(read_vectors(&p));
        assert!(e.contains("nan.npy row 2 (1-based):"), "{e}");
        assert!(e.contains("value 2"), "{e}");
    }

    #[test]
    fn npy_int_dtype_and_3d_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("int.npy");
        let mut w = npyz::WriteOptions::<i32>::new()
            .default_dtype()
            .shape(&[2])
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1i32, 2]).unwrap();
        w.finish().unwrap();
        let e = err_text(read_vectors(&p));
        assert!(e.contains("int.npy") && e.contains("i4") && e.contains("float32"), "{e}");

        let p = dir.path().join("cube.npy");
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[1, 1, 2])
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.0f32, 2.0]).unwrap();
        w.finish().unwrap();
        let e = err_text(read_vectors(&p));
        assert!(e.contains("cube.npy") && e.contains("[1, 1, 2]"), "{e}");
    }

    #[test]
    fn truncated_npy_is_corrupt_not_a_huge_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        write_npy(&p, 100, 8, &vec![0.5; 800]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = read_vectors(&p).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("t.npy"), "{e}");
        std::fs::write(&p, b"\x93NUMPY").unwrap();
        let e = read_vectors(&p).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }) && e.to_string().contains("t.npy"), "{e}");
    }

    #[test]
    fn json_single_and_nested() {
        assert_eq!(
            read_vectors_reader("-", &b"[1, 2.5, -3]"[..]).unwrap(),
            (1, 3, vec![1.0, 2.5, -3.0])
        );
        assert_eq!(
            read_vectors_reader("-", &b"[[1,2],[3,4],[5,6]]"[..]).unwrap(),
            (3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.JSON");
        std::fs::write(&p, "[[0.25, 0.5]]").unwrap();
        assert_eq!(read_vectors(&p).unwrap(), (1, 2, vec![0.25, 0.5]));
    }

    #[test]
    fn json_errors_name_source_row_and_value() {
        let e = err_text(read_vectors_reader("q.json", &b"[[1,2],[3]]"[..]));
        assert!(e.starts_with("q.json row 2 (1-based):") && e.contains("row 1 has 2"), "{e}");
        let e = err_text(read_vectors_reader("q.json", &b"[[1,2],[3,\"x\"]]"[..]));
        assert!(e.starts_with("q.json row 2 (1-based):") && e.contains("value 2") && e.contains("string"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"[1, null]"[..]));
        assert!(e.starts_with("-:") && e.contains("value 2") && e.contains("null"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"[1e300]"[..]));
        assert!(e.contains("f32 range"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"[NaN]"[..]));
        assert!(e.contains("not valid JSON"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"[]"[..]));
        assert!(e.contains("empty"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"{\"a\":1}"[..]));
        assert!(e.contains("expected a JSON array"), "{e}");
        let e = err_text(read_vectors_reader("-", &b"[[1],2]"[..]));
        assert!(e.contains("row 2") && e.contains("a number"), "{e}");
    }

    #[test]
    fn unknown_extension_and_missing_file() {
        let e = err_text(read_vectors(Path::new("vectors.csv")));
        assert!(e.contains("vectors.csv") && e.contains(".npy or .json"), "{e}");
        let e = read_vectors(Path::new("/nonexistent/x.npy")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/x.npy"), "{e}");
    }

    #[test]
    fn write_npy_refuses_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_npy(&dir.path().join("w.npy"), 2, 3, &[0.0; 5]).unwrap_err();
        assert!(e.to_string().contains("5 values"), "{e}");
    }
}
