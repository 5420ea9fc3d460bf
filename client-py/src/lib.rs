//! `stoker._native`: the shared-memory client for Python. Reads release the
//! GIL; `read_view`/`read_many` hand out objects exporting the buffer
//! protocol straight from shared memory (wrap them in `memoryview`), released
//! when the last reference goes. The Dataset classes live in
//! `python/stoker/__init__.py`.

use pyo3::exceptions::{PyFileNotFoundError, PyIOError, PyIsADirectoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::os::raw::c_int;
use stoker_client::{Client as Inner, Data, ReadReq};

fn err(e: stoker_client::Error) -> PyErr {
    let (errno, message) = (e.errno(), e.to_string());
    match errno {
        2 => PyFileNotFoundError::new_err((errno, message)),
        21 => PyIsADirectoryError::new_err((errno, message)),
        22 => PyValueError::new_err(message),
        _ => PyIOError::new_err((errno, message)),
    }
}

/// Bytes in shared memory (or a copy); exports the buffer protocol.
#[pyclass(frozen, module = "stoker._native")]
struct Buffer {
    data: Data,
}

#[pymethods]
impl Buffer {
    /// # Safety
    /// Called by Python with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let bytes: &[u8] = &slf.get().data;
        // SAFETY: `view` is Python's; the bytes live as long as `slf`, which
        // PyBuffer_FillInfo keeps referenced from the view (read-only).
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(view, slf.as_ptr(), bytes.as_ptr() as *mut _, bytes.len() as isize, 1, flags)
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by Python when a view is released; nothing to do.
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// True when the bytes are in shared memory (no copy was made).
    #[getter]
    fn zero_copy(&self) -> bool {
        self.data.is_view()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }
}

#[pyclass(frozen, subclass, module = "stoker._native")]
struct Client {
    inner: Inner,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (socket=None))]
    fn new(py: Python<'_>, socket: Option<String>) -> PyResult<Client> {
        let sock = stoker_client::socket_from_env(socket.as_deref());
        let inner = py.allow_threads(|| Inner::connect(&sock)).map_err(err)?;
        Ok(Client { inner })
    }

    /// Whole file (or `length` bytes at `offset`) as `bytes`.
    #[pyo3(signature = (path, offset=0, length=None))]
    fn read<'py>(&self, py: Python<'py>, path: &str, offset: u64, length: Option<u64>) -> PyResult<Bound<'py, PyBytes>> {
        let v = py
            .allow_threads(|| match length {
                None if offset == 0 => self.inner.read_file(path),
                None => self.inner.stat(path).and_then(|a| self.inner.read(path, offset, a.size.saturating_sub(offset))),
                Some(len) => self.inner.read(path, offset, len),
            })
            .map_err(err)?;
        Ok(PyBytes::new(py, &v))
    }

    /// Whole file as a zero-copy buffer (wrap in `memoryview`).
    fn read_view(&self, py: Python<'_>, path: &str) -> PyResult<Buffer> {
        let mut b = py.allow_threads(|| self.inner.read_batch(vec![ReadReq::file(path)]));
        let d = py.allow_threads(|| b.next()).expect("one answer").1.map_err(err)?;
        Ok(Buffer { data: d })
    }

    /// Whole files in one batch, in the order given: zero-copy buffers
    /// (copies once views hold half the area, or with `copy=True`).
    #[pyo3(signature = (paths, copy=false))]
    fn read_many(&self, py: Python<'_>, paths: Vec<String>, copy: bool) -> PyResult<Vec<Buffer>> {
        let reqs = paths.into_iter().map(ReadReq::file).collect();
        let got = py.allow_threads(|| {
            let b = if copy { self.inner.read_batch_copied(reqs) } else { self.inner.read_batch(reqs) };
            b.collect_ordered()
        });
        got.into_iter().map(|r| r.map(|data| Buffer { data }).map_err(err)).collect()
    }

    /// {"kind": "file"|"dir", "size", "mtime_ns", "version"} as JSON text.
    fn stat_json(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        let a = py.allow_threads(|| self.inner.stat(path)).map_err(err)?;
        Ok(serde_json::to_string(&a).expect("attrs serialize"))
    }

    fn list_json(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        let l = py.allow_threads(|| self.inner.list(path)).map_err(err)?;
        Ok(serde_json::to_string(&l).expect("entries serialize"))
    }

    fn walk_json(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        let l = py.allow_threads(|| self.inner.walk(path)).map_err(err)?;
        Ok(serde_json::to_string(&l).expect("entries serialize"))
    }

    fn engine_stats_json(&self, py: Python<'_>) -> PyResult<String> {
        let s = py.allow_threads(|| self.inner.engine_stats()).map_err(err)?;
        Ok(serde_json::to_string(&s).expect("stats serialize"))
    }

    /// Keep the cached blocks of a file or prefix through eviction:
    /// (files, cached blocks) under it.
    fn pin(&self, py: Python<'_>, path: &str) -> PyResult<(u64, u64)> {
        py.allow_threads(|| self.inner.pin(path)).map(|a| (a.files, a.blocks)).map_err(err)
    }

    fn unpin(&self, py: Python<'_>, path: &str) -> PyResult<(u64, u64)> {
        py.allow_threads(|| self.inner.unpin(path)).map(|a| (a.files, a.blocks)).map_err(err)
    }

    /// Drop the cached blocks of a file or prefix now.
    fn free(&self, py: Python<'_>, path: &str) -> PyResult<(u64, u64)> {
        py.allow_threads(|| self.inner.free(path)).map(|a| (a.files, a.blocks)).map_err(err)
    }

    /// Cached blocks under `path` expire `seconds` after they were cached
    /// (whole seconds, at least one); `None` clears the TTL.
    #[pyo3(signature = (path, seconds))]
    fn ttl(&self, py: Python<'_>, path: &str, seconds: Option<f64>) -> PyResult<(u64, u64)> {
        let ttl = match seconds {
            Some(s) if !(s.is_finite() && s > 0.0) => return Err(PyValueError::new_err("a TTL must be a positive number of seconds (None clears it)")),
            s => s.map(std::time::Duration::from_secs_f64),
        };
        py.allow_threads(|| self.inner.ttl(path, ttl)).map(|a| (a.files, a.blocks)).map_err(err)
    }

    /// {"path", "files", "bytes", "blocks", "cached_blocks", "cached_fraction",
    /// "pinned", "ttl_secs"} as JSON text.
    fn path_stat_json(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        let s = py.allow_threads(|| self.inner.path_stat(path)).map_err(err)?;
        Ok(serde_json::to_string(&s).expect("path stats serialize"))
    }

    /// Tell the engine the order whole files will be read in; it fetches
    /// up to `window` files ahead of the reads.
    #[pyo3(signature = (paths, window=64))]
    fn plan_epoch(&self, py: Python<'_>, paths: Vec<String>, window: usize) -> PyResult<()> {
        py.allow_threads(|| self.inner.plan_epoch(&paths, window)).map_err(err)?;
        Ok(())
    }

    fn session_id(&self) -> PyResult<u64> {
        self.inner.session_id().map_err(err)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Buffer>()?;
    Ok(())
}
