//! The S3-compatible gateway (`stoker serve --s3 ADDR`): S3 clients (boto3,
//! the aws CLI, rclone, Spark's s3a) read and write the engine's namespace.
//! A bucket is a mount (`/NAME`), an object key is a path under it.
//!
//! The S3 protocol itself (routing, XML, SigV4, `aws-chunked` bodies) is
//! s3s's; this crate turns each operation into calls on a
//! `stoker_client::Client` attached to the engine's control socket, like any
//! other client. It never touches the engine's segments or under storage.
//!
//! Modules: `config` (settings, the credentials file), `server` (the
//! listener, its runtime and bounds), `s3` (the `s3s::S3` operations,
//! over `objects`, `listing` and `uploads`),
//! `engine` (blocking client calls off the async threads), `keys` (bucket
//! and key to path), `list` (listing pages), `etag` (ETags and conditional
//! requests), `body` (streaming a request body with its digests),
//! `multipart` (staged uploads), `copy_route` (copies from mounts whose
//! names S3 would refuse), `errors` (client errors as S3 errors).
//! docs/GATEWAY.md says what is supported.

mod body;
mod config;
mod copy_route;
mod engine;
mod errors;
mod etag;
mod keys;
mod list;
mod listing;
mod multipart;
mod objects;
mod s3;
mod server;
mod uploads;

pub use config::{parse_credentials, GatewayConfig};
pub use etag::etag_of;
pub use server::Gateway;
