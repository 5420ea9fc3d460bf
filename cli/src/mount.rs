//! `stoker mount` and `stoker umount` (being built).

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// URI to mount, or /NAME of a running engine with --socket.
    pub source: String,
    /// Where to mount.
    pub mountpoint: std::path::PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: std::path::PathBuf,
}

pub fn run_mount(_args: MountArgs) -> anyhow::Result<()> {
    anyhow::bail!("stoker mount is not available in this build")
}

pub fn run_umount(_args: UmountArgs) -> anyhow::Result<()> {
    anyhow::bail!("stoker umount is not available in this build")
}
