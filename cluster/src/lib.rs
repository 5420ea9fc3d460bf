//! Several stoker engines as one cache (docs/CLUSTER.md): membership in
//! etcd (`membership`), the one placement function every node uses to
//! find a block's owner (`placement`), and the peer protocol (`peer`) with
//! its optional mutual TLS (`tls`). This crate knows nothing of the
//! engine: the engine asks it who owns a key and who the members are.

pub mod membership;
pub mod peer;
pub mod placement;
#[doc(hidden)]
pub mod testing;
pub mod tls;

pub use membership::{parse_cluster_uri, JoinConfig, Membership, View};
pub use placement::{owner, Member};
