//! C ABI over `stoker_client::Client`; the declarations live in
//! `include/stoker.h` and must be kept in step with this file.
//!
//! Every entry point checks its pointers, catches panics (a panic never
//! crosses into C) and reports failures as a negative errno plus a
//! thread-local message (`stoker_last_error`).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use stoker_client::{Client, Error, Kind};

/// The opaque `stoker_client` of the header.
pub struct StokerClient(Client);

#[repr(C)]
pub struct StokerAttr {
    pub size: u64,
    pub mtime_ns: i64,
    pub is_dir: i32,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn fail(e: &Error) -> i32 {
    set_error(&e.to_string());
    -e.errno().max(1)
}

/// Run `f`, turning a panic into -EIO.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_error("stoker: internal error (panic)");
        on_panic
    })
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, i32> {
    if p.is_null() {
        set_error(&format!("{what} is NULL"));
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| {
        set_error(&format!("{what} is not UTF-8"));
        -libc::EINVAL
    })
}

/// # Safety
/// `c` is NULL or a client from `stoker_connect` not yet closed.
unsafe fn client<'a>(c: *mut StokerClient) -> Result<&'a Client, i32> {
    if c.is_null() {
        set_error("client is NULL");
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller promises a live client.
    Ok(unsafe { &(*c).0 })
}

/// # Safety
/// `socket` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn stoker_connect(socket: *const c_char) -> *mut StokerClient {
    guard(std::ptr::null_mut(), || {
        let explicit = if socket.is_null() {
            None
        } else {
            // SAFETY: non-NULL, NUL-terminated by contract.
            match unsafe { str_arg(socket, "socket") } {
                Ok(s) => Some(s),
                Err(_) => return std::ptr::null_mut(),
            }
        };
        let sock = stoker_client::socket_from_env(explicit);
        match Client::connect(&sock) {
            Ok(c) => Box::into_raw(Box::new(StokerClient(c))),
            Err(e) => {
                fail(&e);
                std::ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// `c` is NULL or a client from `stoker_connect`, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn stoker_close(c: *mut StokerClient) {
    if !c.is_null() {
        // SAFETY: the pointer came from Box::into_raw in stoker_connect.
        guard((), || drop(unsafe { Box::from_raw(c) }))
    }
}

/// # Safety
/// `c` is a live client, `path` a C string, `buf` writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn stoker_read(c: *mut StokerClient, path: *const c_char, off: u64, buf: *mut u8, len: usize) -> i64 {
    guard(-(libc::EIO as i64), || {
        // SAFETY: forwarded from the caller's contract.
        let (c, path) = match unsafe { (client(c), str_arg(path, "path")) } {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return e as i64,
        };
        if buf.is_null() && len > 0 {
            set_error("buffer is NULL");
            return -(libc::EINVAL as i64);
        }
        let out: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: the caller promises `len` writable bytes at `buf`.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        match c.read_into(path, off, out) {
            Ok(n) => n as i64,
            Err(e) => fail(&e) as i64,
        }
    })
}

/// # Safety
/// `c` is a live client, `path` a C string, `out` and `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn stoker_read_file(c: *mut StokerClient, path: *const c_char, out: *mut *mut u8, out_len: *mut usize) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: forwarded from the caller's contract.
        let (c, path) = match unsafe { (client(c), str_arg(path, "path")) } {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if out.is_null() || out_len.is_null() {
            set_error("out or out_len is NULL");
            return -libc::EINVAL;
        }
        match c.read_file(path) {
            Ok(v) => {
                let b = v.into_boxed_slice();
                let n = b.len();
                // SAFETY: both out-pointers are non-NULL and writable by contract.
                unsafe {
                    *out_len = n;
                    *out = Box::into_raw(b) as *mut u8;
                }
                0
            }
            Err(e) => fail(&e),
        }
    })
}

/// # Safety
/// `buf`/`len` come from one `stoker_read_file` call, freed once.
#[no_mangle]
pub unsafe extern "C" fn stoker_free(buf: *mut u8, len: usize) {
    if !buf.is_null() {
        // SAFETY: the pointer and length came from Box::into_raw of a boxed slice.
        guard((), || drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf, len)) }))
    }
}

/// # Safety
/// `c` is a live client, `path` a C string, `out` writable.
#[no_mangle]
pub unsafe extern "C" fn stoker_stat(c: *mut StokerClient, path: *const c_char, out: *mut StokerAttr) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: forwarded from the caller's contract.
        let (c, path) = match unsafe { (client(c), str_arg(path, "path")) } {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if out.is_null() {
            set_error("out is NULL");
            return -libc::EINVAL;
        }
        match c.stat(path) {
            Ok(a) => {
                // SAFETY: non-NULL and writable by contract.
                unsafe { *out = StokerAttr { size: a.size, mtime_ns: a.mtime_ns, is_dir: (a.kind == Kind::Dir) as i32 } };
                0
            }
            Err(e) => fail(&e),
        }
    })
}

#[no_mangle]
pub extern "C" fn stoker_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn stoker_strerror(errnum: c_int) -> *const c_char {
    // SAFETY: strerror returns a pointer to a static (or thread-local) string.
    unsafe { libc::strerror(errnum.abs()) }
}
