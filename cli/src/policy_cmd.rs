//! pin, unpin, free, ttl and `stat PATH`: policy and cache-management
//! commands, sent as single control requests to the engine.

use anyhow::{bail, Context, Result};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use stoker_proto::control::{read_frame, write_frame, PathStats, Request, Response};

fn call(socket: &str, req: &Request) -> Result<Response> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach the stoker engine at {socket} (is `stoker serve` running? set --socket or STOKER_SOCKET)")
    })?;
    // Walking a large prefix can take a while; never wait forever.
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write_frame(&mut s, req).context("sending to the engine")?;
    match read_frame::<_, Response>(&mut s).context("reading the engine's answer")? {
        Some(Response::Error { message, .. }) => bail!("{message}"),
        Some(r) => Ok(r),
        None => bail!("the engine closed the connection"),
    }
}

fn done(what: &str, path: &str, r: Response) -> Result<()> {
    match r {
        Response::Done { files, blocks } => {
            println!("{what} {path}: {files} files, {blocks} cached blocks");
            Ok(())
        }
        other => bail!("unexpected answer from the engine: {other:?}"),
    }
}

pub fn pin(socket: &str, path: &str, pinned: bool) -> Result<()> {
    let req = if pinned { Request::Pin { path: path.into() } } else { Request::Unpin { path: path.into() } };
    done(if pinned { "pinned" } else { "unpinned" }, path, call(socket, &req)?)
}

pub fn free(socket: &str, path: &str) -> Result<()> {
    done("freed", path, call(socket, &Request::Free { path: path.into() })?)
}

pub fn ttl(socket: &str, path: &str, duration: &str) -> Result<()> {
    let secs = match duration {
        "never" | "off" | "none" => None,
        d => {
            let dur = stoker_engine::parse_duration(d)
                .map_err(anyhow::Error::msg)?
                .context("a TTL of `never` clears it")?;
            if dur.is_zero() {
                bail!("a TTL must be positive (use `never` to clear it)");
            }
            Some(dur.as_secs().max(1))
        }
    };
    done("ttl set on", path, call(socket, &Request::Ttl { path: path.into(), secs })?)
}

pub fn path_stat(socket: &str, path: &str, json: bool) -> Result<()> {
    let s: PathStats = match call(socket, &Request::PathStat { path: path.into() })? {
        Response::PathStats(s) => s,
        other => bail!("unexpected answer from the engine: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("path       {}", s.path);
        println!("files      {} ({} bytes)", s.files, s.bytes);
        println!("cached     {:.1}% ({} of {} blocks)", s.cached_fraction * 100.0, s.cached_blocks, s.blocks);
        println!("pinned     {}", if s.pinned { "yes" } else { "no" });
        println!("ttl        {}", s.ttl_secs.map_or("none".to_string(), |t| format!("{t}s")));
    }
    Ok(())
}
