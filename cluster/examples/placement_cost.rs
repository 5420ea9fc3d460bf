//! What one placement lookup costs as the member list grows (docs/CLUSTER.md
//! "At 100 and 1,000 nodes"): `stoker_cluster::owner` scores every member,
//! so a lookup is linear in the members.
//!
//! cargo run --release -p stoker-cluster --example placement_cost

use std::hint::black_box;
use std::time::Instant;
use stoker_cluster::{owner, Member};

fn main() {
    for n in [3usize, 10, 100, 1_000] {
        let members: Vec<Member> = (0..n)
            .map(|i| Member { id: format!("gpu-{i:04}"), addr: format!("10.0.{}.{}:7070", i / 250, i % 250), capacity_bytes: 4 << 40 })
            .collect();
        let lookups = (2_000_000 / n).max(1_000) as u64;
        let t0 = Instant::now();
        let mut acc = 0usize;
        for k in 0..lookups {
            let key = xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes());
            acc = acc.wrapping_add(owner(black_box(key), &members).map_or(0, |m| m.id.len()));
        }
        let ns = t0.elapsed().as_nanos() as f64 / lookups as f64;
        println!("{n:>5} members: {ns:>9.0} ns per lookup ({lookups} lookups, {acc})");
    }
}
