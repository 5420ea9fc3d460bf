//! pin, unpin, free, ttl and `stat PATH`: policy and cache-management
//! commands, each one call of `stoker_client::Client`.

use anyhow::{bail, Context, Result};
use std::time::Duration;
use stoker_client::{Applied, Client, Options};

/// A client for one command: fails at once when the engine goes away (run
/// it again) and waits up to 10 minutes for an answer (walking a large
/// prefix can take a while).
fn connect(socket: &str) -> Result<Client> {
    let opts = Options { timeout: Duration::from_secs(600), reconnect: false, direct: false, area_bytes: 1 << 20, ..Default::default() };
    Ok(Client::connect_with(socket, opts)?)
}

fn done(what: &str, path: &str, a: Applied) {
    println!("{what} {path}: {} files, {} cached blocks", a.files, a.blocks);
}

pub fn pin(socket: &str, path: &str, pinned: bool) -> Result<()> {
    let c = connect(socket)?;
    if pinned {
        done("pinned", path, c.pin(path)?);
    } else {
        done("unpinned", path, c.unpin(path)?);
    }
    Ok(())
}

pub fn free(socket: &str, path: &str) -> Result<()> {
    done("freed", path, connect(socket)?.free(path)?);
    Ok(())
}

/// `stoker sync PATH`: wait for the persists under PATH; name each failure.
pub fn sync(socket: &str, path: &str) -> Result<()> {
    let (persisted, failed) = connect(socket)?.sync(path)?;
    if failed.is_empty() {
        eprintln!("stoker: {path}: everything written is in under storage ({persisted} files persisted now)");
        return Ok(());
    }
    for (p, e) in &failed {
        eprintln!("stoker: not persisted: {p}: {e}");
    }
    bail!("{path}: {} written files not in under storage yet (kept in the cache, retried)", failed.len())
}

pub fn ttl(socket: &str, path: &str, duration: &str) -> Result<()> {
    let ttl = match duration {
        "never" | "off" | "none" => None,
        d => {
            let dur = stoker_proto::units::parse_duration(d)
                .map_err(anyhow::Error::msg)?
                .context("a TTL of `never` clears it")?;
            if dur.is_zero() {
                bail!("a TTL must be positive (use `never` to clear it)");
            }
            Some(dur)
        }
    };
    done("ttl set on", path, connect(socket)?.ttl(path, ttl)?);
    Ok(())
}

pub fn path_stat(socket: &str, path: &str, json: bool) -> Result<()> {
    let s = connect(socket)?.path_stat(path)?;
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
