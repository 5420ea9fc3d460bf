//! Hostile clients on the shared-memory protocol cannot hurt the engine.
//!
//! A seeded random generator plays a hostile client against a real `stoker
//! serve` for a bounded number of rounds: forged area headers, SQ entries
//! with out-of-range fields, cursors that cannot be right, garbage and
//! truncated frames on the control and shard sockets, descriptors it never
//! uses, and more requests in flight than its rings hold. After every round
//! the engine must be alive and a well-behaved client must read correct
//! bytes. The hostile side pokes the area with pread/pwrite on its memfd
//! (the engine maps the same pages), so it needs no unsafe code.

mod common;

use common::{make_tree, Server};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use stoker_proto::control::{read_frame, Request, Response, Welcome};
use stoker_proto::ring::{Layout, SqEntry, FLAG_NO_DATA, PAGE};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A memfd of `len` bytes, sealed against shrinking and growing if `seal`.
fn memfd(len: u64, seal: bool) -> File {
    let name = c"hostile";
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    if seal {
        // SAFETY: fcntl on a descriptor we own.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) };
        assert_eq!(r, 0);
    }
    file
}

/// The area header's bytes (`AreaHeader`, repr(C)).
fn header_bytes(magic: u64, version: u32, shards: u32, ring_entries: u32, data_offset: u64, data_bytes: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&magic.to_le_bytes());
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&shards.to_le_bytes());
    b.extend_from_slice(&ring_entries.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&data_offset.to_le_bytes());
    b.extend_from_slice(&data_bytes.to_le_bytes());
    b
}

fn sqe_bytes(e: &SqEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    for v in [e.req_id, e.buf_off, e.buf_len, e.block, e.off_in_block, e.len] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&e.path_len.to_le_bytes());
    b.extend_from_slice(&e.flags.to_le_bytes());
    b.extend_from_slice(&e._reserved.to_le_bytes());
    b
}

fn control(sock: &str) -> UnixStream {
    let c = UnixStream::connect(sock).expect("connecting to the control socket");
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.set_write_timeout(Some(TIMEOUT)).unwrap();
    c
}

/// Sends a Hello with `fds`; the engine's answer, if it gave one.
fn hello(c: &UnixStream, fds: &[RawFd], area_bytes: u64, ring_entries: u32) -> Option<Response> {
    let frame = stoker_proto::control::encode(&Request::Hello { version: stoker_proto::PROTOCOL_VERSION, area_bytes, ring_entries });
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(c.as_raw_fd(), &[IoSlice::new(&frame)], cmsgs, MsgFlags::empty(), None).ok()?;
    read_frame::<_, Response>(&mut &*c).ok().flatten()
}

/// A session the hostile client opened properly, whose area it then abuses.
struct Hostile {
    area: File,
    layout: Layout,
    welcome: Welcome,
    _control: UnixStream,
    bells: Vec<UnixStream>,
    tails: Vec<u32>,
}

impl Hostile {
    fn open(sock: &str, shards: u32, ring_entries: u32) -> Hostile {
        let layout = Layout::new(shards, ring_entries, 1 << 20);
        let area = memfd(layout.total_bytes(), true);
        let h = layout.header();
        area.write_all_at(&header_bytes(h.magic, h.version, h.shards, h.ring_entries, h.data_offset, h.data_bytes), 0).unwrap();
        let c = control(sock);
        let welcome = match hello(&c, &[area.as_raw_fd()], layout.data_bytes, layout.ring_entries) {
            Some(Response::Welcome(w)) => w,
            other => panic!("a proper hello was refused: {other:?}"),
        };
        let bells = welcome
            .shard_sockets
            .iter()
            .map(|p| {
                let mut s = UnixStream::connect(p).unwrap();
                s.set_write_timeout(Some(TIMEOUT)).unwrap();
                s.write_all(&welcome.session.to_le_bytes()).unwrap();
                s
            })
            .collect();
        Hostile { area, layout, welcome, _control: c, bells, tails: vec![0; shards as usize] }
    }

    fn u32_at(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.area.read_exact_at(&mut b, off).unwrap();
        u32::from_le_bytes(b)
    }

    fn set_u32(&self, off: u64, v: u32) {
        self.area.write_all_at(&v.to_le_bytes(), off).unwrap();
    }

    /// Posts `e` on shard `s`'s SQ unless the engine has not taken enough
    /// (as a producer would); false when the ring is full.
    fn push(&mut self, s: usize, e: &SqEntry) -> bool {
        let sq = self.layout.sq_offset(s as u32);
        let head = self.u32_at(sq);
        if self.tails[s].wrapping_sub(head) >= self.layout.ring_entries {
            return false;
        }
        let slot = (self.tails[s] & (self.layout.ring_entries - 1)) as u64;
        self.area.write_all_at(&sqe_bytes(e), sq + 128 + slot * 64).unwrap();
        self.tails[s] = self.tails[s].wrapping_add(1);
        self.set_u32(sq + 64, self.tails[s]);
        true
    }

    fn ring(&mut self, s: usize) {
        let _ = self.bells[s].write_all(&[1]);
    }

    /// Writes `path` into the data area at `buf_off`.
    fn put_path(&self, buf_off: u64, path: &str) {
        self.area.write_all_at(path.as_bytes(), self.layout.data_offset + buf_off).unwrap();
    }
}

fn random_u64(rng: &mut SmallRng, data_bytes: u64) -> u64 {
    match rng.gen_range(0..6) {
        0 => 0,
        1 => u64::MAX - rng.gen_range(0..4096),
        2 => data_bytes - rng.gen_range(0..8192).min(data_bytes),
        3 => data_bytes + rng.gen_range(0..8192),
        4 => 1u64 << rng.gen_range(0..64),
        _ => rng.gen(),
    }
}

/// SQ entries with fields out of range, on a real session.
fn bad_entries(rng: &mut SmallRng, sock: &str, shards: u32, good_path: &str) {
    let mut h = Hostile::open(sock, shards, 1 << rng.gen_range(1..6));
    let data = h.layout.data_bytes;
    for i in 0..64u64 {
        let mut e = SqEntry {
            req_id: i,
            buf_off: random_u64(rng, data),
            buf_len: random_u64(rng, data),
            block: random_u64(rng, data),
            off_in_block: random_u64(rng, data),
            len: random_u64(rng, data),
            path_len: match rng.gen_range(0..4) {
                0 => good_path.len() as u32,
                1 => u32::MAX,
                2 => 4097,
                _ => rng.gen(),
            },
            flags: if rng.gen_bool(0.2) { FLAG_NO_DATA } else { rng.gen() },
            _reserved: rng.gen(),
        };
        if i < 6 {
            // A stream over a multi-block file that runs on to absurd blocks:
            // read-ahead is asked to go where no block is.
            e = SqEntry {
                req_id: i,
                buf_off: data - PAGE,
                buf_len: PAGE,
                block: [0, 1, 2, 3, u64::MAX, 1 << 40][i as usize],
                off_in_block: 0,
                len: 4096,
                path_len: good_path.len() as u32,
                flags: 0,
                _reserved: 0,
            };
            h.put_path(e.buf_off, good_path);
        } else if rng.gen_bool(0.5) {
            // A real path in a slot at the very end of the area, so lengths
            // past the slot run off the area.
            e.buf_off = data - PAGE;
            e.buf_len = rng.gen_range(0..2 * PAGE);
            h.put_path(e.buf_off, good_path);
        }
        let s = rng.gen_range(0..shards as usize);
        if !h.push(s, &e) {
            h.ring(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for s in 0..shards as usize {
        h.ring(s);
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// Cursors that cannot be right, then more entries.
fn bad_cursors(rng: &mut SmallRng, sock: &str, shards: u32) {
    let mut h = Hostile::open(sock, shards, 8);
    for s in 0..shards {
        let (sq, cq) = (h.layout.sq_offset(s), h.layout.cq_offset(s));
        let at = [sq, sq + 64, cq, cq + 64][rng.gen_range(0..4)];
        h.set_u32(at, rng.gen());
        h.ring(s as usize);
    }
    std::thread::sleep(Duration::from_millis(20));
}

/// Forged area headers and descriptors that are not a proper area.
fn bad_hellos(rng: &mut SmallRng, sock: &str, shards: u32) {
    let l = Layout::new(shards, 8, 1 << 20);
    let h = l.header();
    let len = l.total_bytes();
    let (mut shards_f, mut entries, mut off, mut data, mut magic) = (h.shards, h.ring_entries, h.data_offset, h.data_bytes, h.magic);
    match rng.gen_range(0..8) {
        0 => data = u64::MAX - l.data_offset + 1 + PAGE, // wraps total_bytes
        1 => data = u64::MAX,
        2 => data = len + PAGE,
        3 => shards_f = [0, 1, shards + 1, u32::MAX][rng.gen_range(0..4)],
        4 => entries = [0, 3, 1 << 17, u32::MAX][rng.gen_range(0..4)],
        5 => off = rng.gen(),
        6 => magic = rng.gen(),
        _ => data = rng.gen(),
    }
    let c = control(sock);
    match rng.gen_range(0..6) {
        // A forged header on a proper memfd.
        0 | 1 => {
            let f = memfd(len, true);
            f.write_all_at(&header_bytes(magic, h.version, shards_f, entries, off, data), 0).unwrap();
            let r = hello(&c, &[f.as_raw_fd()], data, entries);
            assert!(!matches!(r, Some(Response::Welcome(_))) || (shards_f, entries, off, data, magic) == (h.shards, h.ring_entries, h.data_offset, h.data_bytes, h.magic), "forged header accepted: {r:?}");
        }
        // An unsealed memfd, one too small to hold a header, and sockets.
        2 => {
            let f = memfd(len, false);
            f.write_all_at(&header_bytes(h.magic, h.version, h.shards, h.ring_entries, h.data_offset, h.data_bytes), 0).unwrap();
            assert!(!matches!(hello(&c, &[f.as_raw_fd()], h.data_bytes, 8), Some(Response::Welcome(_))));
        }
        3 => {
            let f = memfd(rng.gen_range(0..PAGE), true);
            assert!(!matches!(hello(&c, &[f.as_raw_fd()], h.data_bytes, 8), Some(Response::Welcome(_))));
        }
        4 => {
            let (a, b) = UnixStream::pair().unwrap();
            assert!(!matches!(hello(&c, &[a.as_raw_fd(), b.as_raw_fd()], h.data_bytes, 8), Some(Response::Welcome(_))));
        }
        // A hello with no area, and one with descriptors it never uses.
        _ => {
            assert!(!matches!(hello(&c, &[], h.data_bytes, 8), Some(Response::Welcome(_))));
            let extra: Vec<File> = (0..rng.gen_range(1..8)).map(|_| memfd(PAGE, false)).collect();
            let fds: Vec<RawFd> = extra.iter().map(|f| f.as_raw_fd()).collect();
            let _ = hello(&control(sock), &fds, h.data_bytes, 8);
        }
    }
}

/// Garbage and truncated frames on the control socket.
fn bad_frames(rng: &mut SmallRng, sock: &str) {
    let mut c = control(sock);
    let mut junk = vec![0u8; rng.gen_range(0..512)];
    rng.fill_bytes(&mut junk);
    let frame = stoker_proto::control::encode(&Request::EngineStat);
    let bytes: Vec<u8> = match rng.gen_range(0..5) {
        0 => junk,
        // A length, then less than it promised.
        1 => frame[..rng.gen_range(1..frame.len())].to_vec(),
        // A length and garbage that is not a request.
        2 => [(junk.len() as u32).to_le_bytes().to_vec(), junk].concat(),
        // A huge length.
        3 => [rng.gen_range(1u32 << 20..u32::MAX).to_le_bytes().to_vec(), junk].concat(),
        // A good frame with trailing garbage.
        _ => [frame, junk].concat(),
    };
    let _ = c.write_all(&bytes);
    if rng.gen_bool(0.5) {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let mut sink = [0u8; 4096];
    let _ = c.read(&mut sink);
}

/// Garbage, truncated ids, unknown sessions and double attaches on shard sockets.
fn bad_shard_streams(rng: &mut SmallRng, sock: &str, shards: u32) {
    let h = Hostile::open(sock, shards, 4);
    for p in &h.welcome.shard_sockets {
        let Ok(mut s) = UnixStream::connect(p) else { continue };
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut junk = vec![0u8; rng.gen_range(0..64)];
        rng.fill_bytes(&mut junk);
        let bytes = match rng.gen_range(0..4) {
            0 => junk[..junk.len().min(7)].to_vec(),
            1 => junk,
            // The same session again: a second consumer of its SQ.
            2 => [h.welcome.session.to_le_bytes().to_vec(), junk].concat(),
            _ => [h.welcome.session.wrapping_add(1 + rng.gen_range(0..1000)).to_le_bytes().to_vec(), junk].concat(),
        };
        let _ = s.write_all(&bytes);
    }
}

/// More requests in flight than the session's rings hold (slow misses).
fn flood(rng: &mut SmallRng, sock: &str, shards: u32) {
    let mut h = Hostile::open(sock, shards, 2);
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_millis(300) {
        let path = format!("/m/nope-{}", rng.gen::<u32>());
        let buf_off = (i % 128) * PAGE;
        h.put_path(buf_off, &path);
        let e = SqEntry { req_id: i, buf_off, buf_len: PAGE, block: 0, off_in_block: 0, len: 16, path_len: path.len() as u32, ..Default::default() };
        let s = rng.gen_range(0..shards as usize);
        if h.push(s, &e) {
            i += 1;
        }
        h.ring(s);
    }
}

#[test]
fn hostile_clients_on_the_rings_cannot_hurt_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tree = make_tree(&src, &[10, 5000, 70_000, 300_000], 3);
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    let mut srv = Server::start(
        &dir.path().join("cache"),
        &sock,
        &[
            "--shards",
            "2",
            "--capacity",
            "64M",
            // Small blocks: the larger files span several, so hostile reads reach read-ahead.
            "--block-size",
            "64K",
            "--ufs-latency",
            "20ms",
            "--mount",
            &format!("m=file://{}", src.display()),
        ],
    );
    let opts = stoker_client::Options { timeout: Duration::from_secs(30), direct: false, ..Default::default() };
    let good = stoker_client::Client::connect_with(&sock, opts.clone()).unwrap();
    // 300,000 bytes: five blocks.
    let good_path = format!("/m/{}", tree[3].0);
    let mut rng = SmallRng::seed_from_u64(0x5707_12e5);
    let t0 = Instant::now();
    let mut rounds = 0;
    while rounds < 12 || (t0.elapsed() < Duration::from_secs(8) && rounds < 200) {
        match rounds % 6 {
            0 => bad_hellos(&mut rng, &sock, 2),
            1 => bad_entries(&mut rng, &sock, 2, &good_path),
            2 => bad_cursors(&mut rng, &sock, 2),
            3 => bad_frames(&mut rng, &sock),
            4 => bad_shard_streams(&mut rng, &sock, 2),
            _ => flood(&mut rng, &sock, 2),
        }
        assert!(srv.child.try_wait().unwrap().is_none(), "the engine exited in round {rounds}");
        for (p, data) in &tree {
            assert!(good.read_file(&format!("/m/{p}")).unwrap() == *data, "wrong bytes for {p} after round {rounds}");
        }
        rounds += 1;
    }
    // A new client still gets in, and the engine counted the flood.
    let fresh = stoker_client::Client::connect_with(&sock, opts).unwrap();
    assert_eq!(fresh.read_file(&good_path).unwrap(), tree[3].1);
    let s = fresh.engine_stats().unwrap();
    assert!(s.shards.iter().any(|s| s.session_inflight_limited > 0), "no shard counted a session over its ring: {:?}", s.shards);
    drop((good, fresh));
    srv.stop();
}
