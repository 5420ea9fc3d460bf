//! fuse-transport-probe: one minimal read-only FUSE server, served over
//! classic /dev/fuse reads or over FUSE-over-io_uring, to measure what the
//! transport alone costs on a box (docs/BENCHMARKS.md, "FUSE over io_uring").
//!
//! Usage (root): fuse-transport-probe MOUNTPOINT SOURCE_DIR MODE THREADS_PER_CPU
//!   MODE: classic | uring (ring threads pinned to their queue's CPU) |
//!         uring-unpinned
//! SOURCE_DIR is laid out as `stoker bench gen` writes it (subdirectories of
//! files). Every file's bytes are packed 4 KiB-aligned into SOURCE_DIR.pack
//! (written once) and READs are one O_DIRECT pread of it, like a stoker
//! segment read; attributes live in memory, so a LOOKUP is the bare round
//! trip. There is no READDIR: list the source, read through the mount.
//! PROBE_NODISK=1 answers READs without reading (the transport and the
//! kernel's page-cache fill only). Stop it with `umount MOUNTPOINT`.
//! A measuring tool, not a product: no permissions, no error recovery.
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;

const IN_HDR: usize = 40;
const OUT_HDR: usize = 16;
const MAX_IO: usize = 1 << 20;
const TTL: u64 = 3600;

struct Node {
    size: u64,
    dir: bool,
    at: u64,
}

struct Fs {
    pack: File,
    nodes: Vec<Node>,
    kids: HashMap<(u64, Vec<u8>), u64>,
}

fn attr(fs: &Fs, ino: u64, out: &mut Vec<u8>) {
    let n = &fs.nodes[(ino - 1) as usize];
    let mode: u32 = if n.dir { libc::S_IFDIR | 0o755 } else { libc::S_IFREG | 0o644 };
    for v in [ino, n.size, n.size.div_ceil(512), 0, 0, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [0u32, 0, 0, mode, if n.dir { 2 } else { 1 }, 0, 0, 0, 4096, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// Handle one request. `op_in` is the op's fixed struct, `extra` what
/// follows it (a name); the answer's bytes go to `out` (or, for READ,
/// into `data`, aligned). Returns (errno or 0, bytes placed in data) or
/// None for no reply.
fn handle(fs: &Fs, opcode: u32, nodeid: u64, op_in: &[u8], extra: &[u8], out: &mut Vec<u8>, data: &mut [u8]) -> Option<(i32, usize)> {
    match opcode {
        1 => {
            let name = extra.split(|&c| c == 0).next().unwrap_or(&[]);
            match fs.kids.get(&(nodeid, name.to_vec())) {
                Some(&ino) => {
                    for v in [ino, 0, TTL, TTL] {
                        out.extend_from_slice(&v.to_ne_bytes());
                    }
                    out.extend_from_slice(&[0u8; 8]);
                    attr(fs, ino, out);
                    Some((0, 0))
                }
                None => Some((libc::ENOENT, 0)),
            }
        }
        2 | 42 | 36 => None,
        3 => {
            out.extend_from_slice(&TTL.to_ne_bytes());
            out.extend_from_slice(&[0u8; 8]);
            attr(fs, nodeid, out);
            Some((0, 0))
        }
        14 => Some((libc::ENOSYS, 0)),
        27 => {
            out.extend_from_slice(&[0u8; 16]);
            Some((0, 0))
        }
        15 => {
            let (off, size) = (u64_at(op_in, 8), u32_at(op_in, 16) as usize);
            let n = &fs.nodes[(nodeid - 1) as usize];
            if n.dir {
                return Some((libc::EISDIR, 0));
            }
            let want = size.min(MAX_IO).min(n.size.saturating_sub(off) as usize);
            let len = want.next_multiple_of(4096);
            if std::env::var_os("PROBE_NODISK").is_some() {
                return Some((0, want));
            }
            match fs.pack.read_at(&mut data[..len], n.at + off) {
                Ok(got) => Some((0, got.min(want))),
                Err(e) => Some((e.raw_os_error().unwrap_or(libc::EIO), 0)),
            }
        }
        17 => {
            out.extend_from_slice(&[0u8; 80]);
            Some((0, 0))
        }
        18 | 25 | 29 | 34 => Some((0, 0)),
        38 => Some((0, 0)),
        _ => Some((libc::ENOSYS, 0)),
    }
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A page-aligned buffer for the life of the process.
fn aligned(len: usize) -> &'static mut [u8] {
    let pages = len.div_ceil(4096);
    let v: Vec<Page> = (0..pages).map(|_| Page([0; 4096])).collect();
    let p = Box::leak(v.into_boxed_slice());
    // SAFETY: `pages` leaked, initialised pages, viewed as bytes.
    unsafe { std::slice::from_raw_parts_mut(p.as_mut_ptr().cast::<u8>(), pages * 4096) }
}

fn classic_loop(fs: Arc<Fs>, fd: RawFd) {
    let buf = aligned(MAX_IO + 8192);
    let data = aligned(MAX_IO + 4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        // SAFETY: reading into a buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::EINTR || e == libc::ENOENT || e == libc::EAGAIN {
                continue;
            }
            return;
        }
        let req = &buf[..n as usize];
        let (opcode, unique, nodeid) = (u32_at(req, 4), u64_at(req, 8), u64_at(req, 16));
        let body = &req[IN_HDR..];
        let fixed = match opcode {
            3 => 16,
            15 => 40,
            14 | 27 => 8,
            _ => 0,
        }
        .min(body.len());
        out.clear();
        let Some((err, dn)) = handle(&fs, opcode, nodeid, &body[..fixed], &body[fixed..], &mut out, data) else { continue };
        let payload: &[u8] = if err != 0 { &[] } else if opcode == 15 { &data[..dn] } else { &out };
        let mut hdr = [0u8; OUT_HDR];
        hdr[0..4].copy_from_slice(&((OUT_HDR + payload.len()) as u32).to_ne_bytes());
        hdr[4..8].copy_from_slice(&(-err).to_ne_bytes());
        hdr[8..16].copy_from_slice(&unique.to_ne_bytes());
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: OUT_HDR },
            libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() },
        ];
        // SAFETY: two iovecs naming live buffers.
        unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        if opcode == 38 {
            return;
        }
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; one bit set inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn uring_cmd(fd: RawFd, op: u32, commit_id: u64, qid: u16, iov: *const libc::iovec) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let e = opcode::UringCmd80::new(types::Fd(fd), op).cmd(cmd).addr(Some(iov as u64)).build();
    // The kernel wants sqe->len == 2 (header and payload iovecs).
    // SAFETY: Entry128 is repr(C), 128 bytes; sqe->len is at byte 24.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: the same bytes back.
    unsafe { std::mem::transmute(raw) }
}

fn uring_loop(fs: Arc<Fs>, fd: RawFd, qid: usize, pinned: bool) {
    if pinned {
        pin(qid);
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(4).expect("io_uring");
    let header = aligned(4096);
    let payload = aligned(MAX_IO + 4096);
    let iov = Box::leak(Box::new([
        libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: 288 },
        libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: MAX_IO + 4096 },
    ]));
    let mut out = Vec::with_capacity(4096);
    let mut next = uring_cmd(fd, 1, 0, qid as u16, iov.as_ptr());
    loop {
        // SAFETY: the iovecs and buffers are leaked, so outlive the command.
        unsafe { ring.submission().push(&next).expect("sq") };
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            eprintln!("q{qid}: {e}");
            return;
        }
        let c = ring.completion().next().expect("cqe");
        if c.result() < 0 {
            eprintln!("q{qid}: cqe {}", std::io::Error::from_raw_os_error(-c.result()));
            return;
        }
        let (opcode, unique, nodeid) = (u32_at(header, 4), u64_at(header, 8), u64_at(header, 16));
        let commit_id = u64_at(header, 256 + 8);
        let psz = u32_at(header, 256 + 16) as usize;
        let op_in: Vec<u8> = header[128..256].to_vec();
        let extra: Vec<u8> = payload[..psz.min(4096)].to_vec();
        out.clear();
        let r = handle(&fs, opcode, nodeid, &op_in, &extra, &mut out, payload);
        let (err, dn) = r.unwrap_or((0, 0));
        let n = if err != 0 {
            0
        } else if opcode == 15 {
            dn
        } else {
            payload[..out.len()].copy_from_slice(&out);
            out.len()
        };
        header[0..4].copy_from_slice(&((OUT_HDR + n) as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&(-err).to_ne_bytes());
        header[8..16].copy_from_slice(&unique.to_ne_bytes());
        header[256 + 16..256 + 20].copy_from_slice(&(n as u32).to_ne_bytes());
        next = uring_cmd(fd, 2, commit_id, qid as u16, iov.as_ptr());
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: fuse-transport-probe MOUNTPOINT SOURCE_DIR classic|uring|uring-unpinned THREADS_PER_CPU");
        std::process::exit(2);
    }
    let (mp, src, mode, per_q) = (&a[1], &a[2], a[3].as_str(), a[4].parse::<usize>().unwrap());
    // The tree: SOURCE_DIR's subdirectories and their files, each opened O_DIRECT.
    // Every file's bytes in one pack file, 4 KiB aligned (like a segment), read O_DIRECT.
    let pack_path = format!("{}.pack", src.trim_end_matches('/'));
    let fresh = !std::path::Path::new(&pack_path).exists();
    let mut packw = fresh.then(|| std::fs::File::create(&pack_path).unwrap());
    let mut at = 0u64;
    let pack = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&pack_path).unwrap();
    let mut fs = Fs { pack, nodes: vec![Node { size: 0, dir: true, at: 0 }], kids: HashMap::new() };
    let mut dirs: Vec<_> = std::fs::read_dir(src).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        fs.nodes.push(Node { size: 0, dir: true, at: 0 });
        let dino = fs.nodes.len() as u64;
        fs.kids.insert((1, d.file_name().unwrap().as_encoded_bytes().to_vec()), dino);
        let mut files: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for p in files {
            let size = std::fs::metadata(&p).unwrap().size();
            if let Some(w) = packw.as_mut() {
                let bytes = std::fs::read(&p).unwrap();
                w.write_all_at(&bytes, at).unwrap();
            }
            fs.nodes.push(Node { size, dir: false, at });
            at += size.next_multiple_of(4096);
            fs.kids.insert((dino, p.file_name().unwrap().as_encoded_bytes().to_vec()), fs.nodes.len() as u64);
        }
    }
    if let Some(w) = packw {
        w.set_len(at).unwrap();
        w.sync_all().unwrap();
    }
    eprintln!("{} nodes", fs.nodes.len());
    let fs = Arc::new(fs);
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
    let fd = dev.as_raw_fd();
    let opts = CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,max_read={MAX_IO}")).unwrap();
    let (srcc, mpc, ty) = (CString::new("probe").unwrap(), CString::new(mp.as_str()).unwrap(), CString::new("fuse.probe").unwrap());
    // SAFETY: NUL-terminated strings that live across the call.
    let r = unsafe { libc::mount(srcc.as_ptr(), mpc.as_ptr(), ty.as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY, opts.as_ptr().cast()) };
    assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
    // INIT over /dev/fuse.
    let buf = aligned(MAX_IO + 8192);
    // SAFETY: reading into a buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0 && u32_at(buf, 4) == 26, "no INIT");
    let unique = u64_at(buf, 8);
    let (kminor, kra, kflags, kflags2) = (u32_at(buf, 44), u32_at(buf, 48), u32_at(buf, 52), u32_at(buf, 56));
    let uring = mode.starts_with("uring");
    let want: u32 = 1 | (1 << 5) | (1 << 17) | (1 << 18) | (1 << 22) | (1 << 30);
    let want2: u32 = if uring { 1 << 9 } else { 0 };
    eprintln!("kernel 7.{kminor} flags {kflags:#x} flags2 {kflags2:#x}; uring offered: {}", kflags2 & (1 << 9) != 0);
    let mut o = Vec::new();
    for v in [7u32, kminor, kra.min(MAX_IO as u32), kflags & want] {
        o.extend_from_slice(&v.to_ne_bytes());
    }
    o.extend_from_slice(&64u16.to_ne_bytes());
    o.extend_from_slice(&48u16.to_ne_bytes());
    o.extend_from_slice(&(MAX_IO as u32).to_ne_bytes());
    o.extend_from_slice(&1u32.to_ne_bytes());
    o.extend_from_slice(&256u16.to_ne_bytes());
    o.extend_from_slice(&0u16.to_ne_bytes());
    o.extend_from_slice(&(kflags2 & want2).to_ne_bytes());
    o.extend_from_slice(&[0u8; 28]);
    let mut hdr = [0u8; OUT_HDR];
    hdr[0..4].copy_from_slice(&((OUT_HDR + o.len()) as u32).to_ne_bytes());
    hdr[8..16].copy_from_slice(&unique.to_ne_bytes());
    let iov = [
        libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: OUT_HDR },
        libc::iovec { iov_base: o.as_ptr() as *mut _, iov_len: o.len() },
    ];
    // SAFETY: two iovecs naming live buffers.
    assert!(unsafe { libc::writev(fd, iov.as_ptr(), 2) } > 0, "init reply: {}", std::io::Error::last_os_error());
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut th = Vec::new();
    if uring {
        for q in 0..cpus {
            for _ in 0..per_q {
                let fs = fs.clone();
                let pinned = mode == "uring";
                th.push(std::thread::spawn(move || uring_loop(fs, fd, q, pinned)));
            }
        }
        // FORGETs and anything sent before the ring is ready come here.
        let fs2 = fs.clone();
        th.push(std::thread::spawn(move || classic_loop(fs2, fd)));
    } else {
        for _ in 0..per_q * cpus {
            let mut src = fd as u32;
            let c = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
            // SAFETY: FUSE_DEV_IOC_CLONE takes a pointer to the source fd.
            let r = unsafe { libc::ioctl(c.as_raw_fd(), 0x8004e500, &mut src) };
            assert_eq!(r, 0, "clone: {}", std::io::Error::last_os_error());
            let cfd = c.as_raw_fd();
            std::mem::forget(c);
            let fs = fs.clone();
            th.push(std::thread::spawn(move || classic_loop(fs, cfd)));
        }
    }
    eprintln!("serving {mp} ({mode}, {} threads)", th.len());
    for t in th {
        let _ = t.join();
    }
    drop(dev);
}
