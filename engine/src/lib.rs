//! The stoker cache engine: shards that own NVMe segment stores, the under-storage
//! layer, the namespace cache and the server that clients attach to.

pub mod store;
