//! The write requests of the control socket (create, write, close, abort,
//! unlink, sync), answered by the write path (`write/`). A mount without a
//! write mode, or an engine without one, answers EROFS.

use crate::namespace::NsError;
use crate::server::ctx::ControlCtx;
use stoker_proto::control::{Request, Response};

fn error(e: NsError) -> Response {
    Response::Error { errno: e.errno(), message: e.to_string() }
}

const DONE: Response = Response::Done { files: 0, blocks: 0 };

/// `data` is the raw bytes that followed a `Write` frame.
pub fn handle(ctx: &ControlCtx, req: Request, data: &[u8]) -> Response {
    let Some(w) = &ctx.writes else {
        return Response::Error { errno: libc::EROFS, message: "read-only: no mount of this engine has a write= mode".into() };
    };
    let res = match req {
        Request::Create { path, mode, uid, gid } => w.create(&path, mode, uid, gid).map(|handle| Response::Handle { handle }),
        Request::Write { handle, off, .. } => w.write(handle, off, data).map(|()| DONE),
        Request::Close { handle } => w.close(handle).map(Response::Attr),
        Request::Fsync { handle } => w.fsync(handle).map(|()| DONE),
        Request::Abort { handle } => w.abort(handle).map(|()| DONE),
        Request::Unlink { path } => w.unlink(&path).map(|()| DONE),
        Request::Rename { from, to } => w.rename(&from, &to).map(|()| DONE),
        Request::Mkdir { path } => w.mkdir(&path).map(|()| DONE),
        Request::Rmdir { path } => w.rmdir(&path).map(|()| DONE),
        Request::Sync { path } => w.sync(&path).map(|o| Response::Synced { persisted: o.persisted, failed: o.failed }),
        _ => Err(NsError::Invalid("not a write request".into())),
    };
    res.unwrap_or_else(error)
}
