//! A shard that panics takes the whole engine down.
//!
//! glommio cancels a panicking task and unwinds its executor's thread; the
//! rest of the engine would stay up with a dead shard, and every read routed
//! to it would hang until the client's timeout. Instead a panic hook, set
//! once when an engine starts, logs one line naming the shard and the cause
//! and exits the process with [`EXIT_SHARD_PANIC`], so a supervisor
//! (systemd, Kubernetes) restarts a whole engine. The store is not flushed:
//! a restart recovers it as after `kill -9` (docs/FORMAT.md).
//! Panics on other threads keep the default behaviour.

/// Exit status of an engine whose shard panicked (EX_SOFTWARE).
pub const EXIT_SHARD_PANIC: i32 = 70;

const SHARD_THREAD_PREFIX: &str = "stoker-shard-";

/// The name given to shard `id`'s executor (glommio appends `-N` to make
/// its thread's name); the hook recognises shards by it.
pub fn shard_thread_name(id: usize) -> String {
    format!("{SHARD_THREAD_PREFIX}{id}")
}

/// Install the hook (once per process; the previous hook still runs first).
pub fn exit_on_shard_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            // glommio appends its executor id: "stoker-shard-3-17".
            let Some(rest) = thread.name().and_then(|n| n.strip_prefix(SHARD_THREAD_PREFIX)) else { return };
            let shard = rest.split('-').next().unwrap_or(rest);
            let cause = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
            let line = format!(
                "shard {shard} panicked{at}: {cause}; stopping the engine (exit status {EXIT_SHARD_PANIC}) rather than serve with a dead shard"
            );
            if tracing::dispatcher::has_been_set() {
                tracing::error!("{line}");
            } else {
                eprintln!("stoker: error: {line}");
            }
            std::process::exit(EXIT_SHARD_PANIC);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "STOKER_SUPERVISE_CHILD";

    /// Runs itself again as a child process in which a task on a real
    /// glommio executor named as a shard panics; the child must exit with
    /// EXIT_SHARD_PANIC and say which shard and why.
    #[test]
    fn a_panicking_shard_exits_the_process_naming_the_cause() {
        if std::env::var_os(CHILD).is_some() {
            exit_on_shard_panic();
            let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&shard_thread_name(3))
                .spawn(|| async {
                    glommio::spawn_local(async { panic!("injected fault") }).await;
                })
                .unwrap();
            let _ = h.join();
            // Reached only when the hook let the engine live on.
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "shard::supervise::tests::a_panicking_shard_exits_the_process_naming_the_cause", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_SHARD_PANIC), "child stderr: {err}");
        assert!(err.contains("shard 3 panicked at") && err.contains("injected fault"), "child stderr: {err}");
    }

    #[test]
    fn other_threads_panic_as_before() {
        exit_on_shard_panic();
        let r = std::thread::Builder::new().name("stoker-control".into()).spawn(|| panic!("not a shard")).unwrap().join();
        assert!(r.is_err());
    }
}
