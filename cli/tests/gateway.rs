//! The S3 gateway (`stoker serve --s3`) against real clients: boto3, the
//! aws CLI and rclone (scripts/setup.sh installs them with STOKER_NEED_S3=1;
//! without them these tests skip with a reason, unless STOKER_REQUIRE_S3 is
//! set). Each test starts its own engine with a writable local-directory
//! mount `work` and a read-only one `ro` (docs/GATEWAY.md).

mod common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const AK: &str = "gw-test-key";
const SK: &str = "gw-test-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether the named clients are there; a skip says why (a failure when
/// STOKER_REQUIRE_S3 is set).
fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| match *t {
            "boto3" => !have("python3", &["-c", "import boto3"]),
            "aws" => !have("aws", &["--version"]),
            "rclone" => !have("rclone", &["version"]),
            _ => true,
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("STOKER_REQUIRE_S3").is_some() {
        panic!("{} required (STOKER_REQUIRE_S3 is set) but not installed: run scripts/setup.sh", missing.join(", "));
    }
    eprintln!("SKIPPED: {} not installed (STOKER_NEED_S3=1 bash scripts/setup.sh installs them)", missing.join(", "));
    false
}

struct Gw {
    srv: Server,
    port: u16,
}

/// An engine with the gateway on a free port: `work` (write=async) over
/// `dir/ufs`, `ro` (read-only) over `dir/ro`, behind `latency`.
fn serve(dir: &Path, latency: &str) -> Gw {
    serve_with(dir, latency, true, &[])
}

/// `serve`, with or without `--s3-credentials`.
fn serve_with(dir: &Path, latency: &str, authenticated: bool, extra: &[&str]) -> Gw {
    for d in ["ufs", "ro"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let creds = dir.join("creds");
    std::fs::write(&creds, format!("# test keys\n{AK}:{SK}\n")).unwrap();
    let port = free_port();
    let sock = dir.join("s.sock").to_string_lossy().into_owned();
    let m = format!("work=file://{}", dir.join("ufs").display());
    let ro = format!("ro=file://{}", dir.join("ro").display());
    let s3 = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--shards", "1", "--capacity", "1G", "--segment-size", "64M", "--mount", &m, "--mount-opt", "work:write=async", "--mount", &ro,
        "--ufs-latency", latency, "--s3", &s3,
    ];
    if authenticated {
        args.extend(["--s3-credentials", creds.to_str().unwrap()]);
    }
    args.extend(extra);
    let srv = Server::start(&dir.join("cache"), &sock, &args);
    wait_for("the gateway to listen", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    Gw { srv, port }
}

impl Gw {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run a Python program with `s3` (a boto3 client of this gateway),
    /// `ENDPOINT` and `bad` (a client with a wrong secret) defined; its
    /// output, or a panic with it when it fails.
    fn python(&self, program: &str) -> String {
        let prelude = format!(
            "import boto3, botocore, hashlib, base64, concurrent.futures\n\
             from botocore.config import Config\n\
             ENDPOINT = '{ep}'\n\
             def client(secret, style='path'):\n    \
                 return boto3.client('s3', endpoint_url=ENDPOINT, aws_access_key_id='{AK}', aws_secret_access_key=secret,\n        \
                     region_name='us-east-1', config=Config(s3={{'addressing_style': style}}, retries={{'max_attempts': 1}}, max_pool_connections=16))\n\
             s3 = client('{SK}')\n\
             bad = client('wrong-secret')\n\
             def code(f):\n    \
                 try:\n        \
                     f()\n    \
                 except botocore.exceptions.ClientError as e:\n        \
                     return e.response['Error']['Code']\n    \
                 return 'no error'\n",
            ep = self.endpoint()
        );
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(format!("{prelude}{program}"));
        cmd.env("STOKER_BIN", env!("CARGO_BIN_EXE_stoker")).env("STOKER_SOCK", &self.srv.socket);
        let out = aws_env(&mut cmd).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "python failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        text
    }

    fn aws(&self, args: &[&str]) -> std::process::Output {
        aws_env(Command::new("aws").args(["--endpoint-url", &self.endpoint(), "--region", "us-east-1"]).args(args)).output().unwrap()
    }
}

/// The environment of an AWS client: these keys, nothing from the host.
fn aws_env(cmd: &mut Command) -> &mut Command {
    for v in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "AWS_PROFILE", "AWS_SESSION_TOKEN"] {
        cmd.env_remove(v);
    }
    cmd.env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
}

fn data(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn boto3_objects_ranges_conditions_listing_copy_delete_and_refusals() {
    if !require(&["boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 2,100 keys in under storage before the start: the listing pages over them.
    for i in 0..2100 {
        let p = dir.path().join(format!("ufs/many/d{}/k{i:05}", i % 3));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{i}")).unwrap();
    }
    for i in 0..5 {
        std::fs::write(dir.path().join("ufs/many").join(format!("top{i}")), b"t").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("ro")).unwrap();
    std::fs::write(dir.path().join("ro/old.txt"), b"from before").unwrap();
    let gw = serve(dir.path(), "0ms");
    let out = gw.python(
        r#"
body = bytes(range(256)) * 4096 + b'tail'
md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
put = s3.put_object(Bucket='work', Key='dir/obj.bin', Body=body, ContentMD5=md5)
etag = put['ETag']
assert len(etag.strip('"')) == 24, etag
g = s3.get_object(Bucket='work', Key='dir/obj.bin')
assert g['Body'].read() == body and g['ContentLength'] == len(body)
# The ETag changes once, when the object is persisted (docs/GATEWAY.md):
# wait for that, then it holds.
import subprocess, os
subprocess.run([os.environ['STOKER_BIN'], 'sync', '--socket', os.environ['STOKER_SOCK'], '/work'], check=True, capture_output=True)
etag = s3.get_object(Bucket='work', Key='dir/obj.bin')['ETag']
r = s3.get_object(Bucket='work', Key='dir/obj.bin', Range='bytes=1000-1999')
assert r['Body'].read() == body[1000:2000] and r['ContentRange'] == 'bytes 1000-1999/%d' % len(body), r['ContentRange']
assert s3.get_object(Bucket='work', Key='dir/obj.bin', Range='bytes=-4')['Body'].read() == b'tail'
assert s3.get_object(Bucket='work', Key='dir/obj.bin', Range='bytes=1048570-')['Body'].read() == body[1048570:]
assert code(lambda: s3.get_object(Bucket='work', Key='dir/obj.bin', Range='bytes=%d-' % len(body))) == 'InvalidRange'
h = s3.head_object(Bucket='work', Key='dir/obj.bin')
assert h['ContentLength'] == len(body) and h['ETag'] == etag
# Conditional requests.
assert s3.get_object(Bucket='work', Key='dir/obj.bin', IfMatch=etag)['Body'].read() == body
assert code(lambda: s3.get_object(Bucket='work', Key='dir/obj.bin', IfMatch='"0000"')) == 'PreconditionFailed'
assert code(lambda: s3.get_object(Bucket='work', Key='dir/obj.bin', IfNoneMatch=etag)) == '304'
assert code(lambda: s3.get_object(Bucket='work', Key='dir/obj.bin', IfModifiedSince=h['LastModified'])) == '304'
assert code(lambda: s3.get_object(Bucket='work', Key='dir/obj.bin', IfUnmodifiedSince='2000-01-01T00:00:00Z')) == 'PreconditionFailed'
# Digests: a wrong Content-MD5 or checksum is refused and leaves nothing.
bad_md5 = base64.b64encode(hashlib.md5(b'other').digest()).decode()
assert code(lambda: s3.put_object(Bucket='work', Key='bad.bin', Body=b'payload', ContentMD5=bad_md5)) == 'BadDigest'
assert code(lambda: s3.put_object(Bucket='work', Key='bad.bin', Body=b'payload', ChecksumCRC32='AAAAAA==')) == 'BadDigest'
assert code(lambda: s3.head_object(Bucket='work', Key='bad.bin')) == '404'
for alg in ['CRC32', 'SHA1', 'SHA256']:
    p = s3.put_object(Bucket='work', Key='sum-' + alg, Body=b'x' * 70000, ChecksumAlgorithm=alg)
    assert ('Checksum' + alg) in p, p
    assert s3.get_object(Bucket='work', Key='sum-' + alg)['Body'].read() == b'x' * 70000
# Listing: delimiter, prefix, pages (v2 and v1).
top = s3.list_objects_v2(Bucket='work', Prefix='many/', Delimiter='/')
assert [p['Prefix'] for p in top['CommonPrefixes']] == ['many/d0/', 'many/d1/', 'many/d2/'], top
assert [o['Key'] for o in top['Contents']] == ['many/top%d' % i for i in range(5)]
keys, pages = [], 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='work', Prefix='many/d', PaginationConfig={'PageSize': 1000}):
    pages += 1
    keys += [o['Key'] for o in page.get('Contents', [])]
want = sorted('many/d%d/k%05d' % (i % 3, i) for i in range(2100))
assert keys == want and pages == 3, (len(keys), pages)
after = s3.list_objects_v2(Bucket='work', Prefix='many/d1/', StartAfter='many/d1/k02000', MaxKeys=5)
assert [o['Key'] for o in after['Contents']] == [k for k in want if k.startswith('many/d1/') and k > 'many/d1/k02000'][:5]
v1 = [o['Key'] for p in s3.get_paginator('list_objects').paginate(Bucket='work', Prefix='many/d2/') for o in p.get('Contents', [])]
assert v1 == [k for k in want if k.startswith('many/d2/')]
# Copy, delete, delete many.
c = s3.copy_object(Bucket='work', Key='copy/obj.bin', CopySource={'Bucket': 'work', 'Key': 'dir/obj.bin'})
assert s3.get_object(Bucket='work', Key='copy/obj.bin')['Body'].read() == body
assert len(c['CopyObjectResult']['ETag'].strip('"')) == 24
s3.delete_object(Bucket='work', Key='copy/obj.bin')
assert code(lambda: s3.get_object(Bucket='work', Key='copy/obj.bin')) == 'NoSuchKey'
s3.delete_object(Bucket='work', Key='never/was')
d = s3.delete_objects(Bucket='work', Delete={'Objects': [{'Key': 'sum-CRC32'}, {'Key': 'sum-SHA1'}, {'Key': 'missing'}]})
assert sorted(x['Key'] for x in d['Deleted']) == ['missing', 'sum-CRC32', 'sum-SHA1'], d
assert [o['Key'] for o in s3.list_objects_v2(Bucket='work', Prefix='sum-')['Contents']] == ['sum-SHA256']
# Buckets are mounts; a read-only mount refuses writes; a wrong secret is refused.
assert sorted(b['Name'] for b in s3.list_buckets()['Buckets']) == ['ro', 'work']
assert s3.get_object(Bucket='ro', Key='old.txt')['Body'].read() == b'from before'
# A copy from a mount whose name S3's rules refuse ('ro' is too short).
c = s3.copy_object(Bucket='work', Key='from-ro.txt', CopySource={'Bucket': 'ro', 'Key': 'old.txt'})
assert len(c['CopyObjectResult']['ETag'].strip('"')) == 24
assert s3.get_object(Bucket='work', Key='from-ro.txt')['Body'].read() == b'from before'
assert code(lambda: s3.copy_object(Bucket='ro', Key='x', CopySource={'Bucket': 'ro', 'Key': 'old.txt'})) == 'AccessDenied'
assert code(lambda: bad.copy_object(Bucket='work', Key='y', CopySource={'Bucket': 'ro', 'Key': 'old.txt'})) == 'SignatureDoesNotMatch'
assert code(lambda: s3.put_object(Bucket='ro', Key='new.txt', Body=b'no')) == 'AccessDenied'
assert code(lambda: s3.get_object(Bucket='nosuch', Key='x')) == 'NoSuchBucket'
assert code(lambda: s3.get_object(Bucket='work', Key='nokey')) == 'NoSuchKey'
assert code(lambda: s3.put_object(Bucket='work', Key='dir/obj.bin/below', Body=b'x')) == 'InvalidArgument'
assert code(lambda: s3.put_object(Bucket='work', Key='a//b', Body=b'x')) == 'InvalidArgument'
assert code(lambda: bad.get_object(Bucket='work', Key='dir/obj.bin')) == 'SignatureDoesNotMatch'
assert code(lambda: bad.put_object(Bucket='work', Key='evil', Body=b'x')) == 'SignatureDoesNotMatch'
assert code(lambda: s3.head_object(Bucket='work', Key='evil')) == '404'
# Virtual-host style: the bucket in the Host header (signed as sent).
from botocore.awsrequest import AWSRequest
from botocore.auth import S3SigV4Auth
from botocore.credentials import Credentials
import urllib.request
port = ENDPOINT.rsplit(':', 1)[1]
req = AWSRequest(method='GET', url=ENDPOINT + '/dir/obj.bin', headers={'Host': 'work.localhost:' + port})
S3SigV4Auth(Credentials('gw-test-key', 'gw-test-secret'), 's3', 'us-east-1').add_auth(req)
got = urllib.request.urlopen(urllib.request.Request(req.url, headers=dict(req.headers.items()))).read()
assert got == body
# Many small PUTs at once.
def put(i):
    s3.put_object(Bucket='work', Key='par/k%03d' % i, Body=b'v%d' % i)
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(put, range(200)))
listed = [o['Key'] for o in s3.list_objects_v2(Bucket='work', Prefix='par/')['Contents']]
assert listed == ['par/k%03d' % i for i in range(200)], [k for k in listed if not k.startswith('par/k')]
print('all ok')
"#,
    );
    assert!(out.contains("all ok"), "{out}");
    // What the gateway wrote is what the namespace and under storage hold.
    let c = gw.srv.client();
    let body: Vec<u8> = (0..4096).flat_map(|_| 0..=255u8).chain(*b"tail").collect();
    assert!(c.read_file("/work/dir/obj.bin").unwrap() == body);
    assert!(!dir.path().join("ufs/bad.bin").exists() && !dir.path().join("ufs/evil").exists());
    let out = run(&["sync", "--socket", &gw.srv.socket, "/work"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dir.path().join("ufs/dir/obj.bin")).unwrap() == body);
    assert_eq!(std::fs::read(dir.path().join("ufs/par/k007")).unwrap(), b"v7");
    assert!(!dir.path().join("ufs/copy/obj.bin").exists());
}

#[test]
fn aws_cli_multipart_100_mib_and_rclone_round_trip() {
    if !require(&["aws", "rclone"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = serve(dir.path(), "0ms");
    let big = dir.path().join("big.bin");
    let d = data(7, 100 << 20);
    std::fs::write(&big, &d).unwrap();
    // Above 8 MiB the aws CLI uploads in 8 MiB parts.
    let out = gw.aws(&["s3", "cp", big.to_str().unwrap(), "s3://work/big/big.bin"]);
    assert!(out.status.success(), "aws s3 cp up: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("cache/s3-uploads").read_dir().unwrap().next().is_none(), "staged parts are removed once complete");
    let back = dir.path().join("back.bin");
    let out = gw.aws(&["s3", "cp", "s3://work/big/big.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "aws s3 cp down: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == d, "100 MiB back byte-exact");
    let out = gw.aws(&["s3", "ls", "s3://work/big/"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} big.bin", 100 << 20)), "{}", String::from_utf8_lossy(&out.stdout));
    let out = gw.aws(&["s3api", "list-multipart-uploads", "--bucket", "work"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("UploadId"));
    let out = run(&["sync", "--socket", &gw.srv.socket, "/work/big"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dir.path().join("ufs/big/big.bin")).unwrap() == d, "byte-exact in under storage");
    let out = gw.aws(&["s3", "rm", "s3://work/big/big.bin"]);
    assert!(out.status.success());
    assert_eq!(gw.srv.client().stat("/work/big/big.bin").unwrap_err().errno(), libc::ENOENT);

    // rclone: copy a tree up, list it, check it, read one back, delete it.
    let src = dir.path().join("tree");
    let files = make_tree(&src, &[0, 1, 5000, 300_000, 6 << 20], 3);
    let rclone = |args: &[&str]| {
        let mut cmd = Command::new("rclone");
        for v in ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "AWS_PROFILE"] {
            cmd.env_remove(v);
        }
        cmd.args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_CONFIG_GW_TYPE", "s3")
            .env("RCLONE_CONFIG_GW_PROVIDER", "Other")
            .env("RCLONE_CONFIG_GW_ACCESS_KEY_ID", AK)
            .env("RCLONE_CONFIG_GW_SECRET_ACCESS_KEY", SK)
            .env("RCLONE_CONFIG_GW_ENDPOINT", gw.endpoint())
            .env("RCLONE_CONFIG_GW_FORCE_PATH_STYLE", "true")
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "rclone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let rclone_text = |args: &[&str]| String::from_utf8(rclone(args)).unwrap();
    rclone(&["copy", src.to_str().unwrap(), "gw:work/rc"]);
    for (rel, bytes) in &files {
        assert!(gw.srv.client().read_file(&format!("/work/rc/{rel}")).unwrap() == *bytes, "{rel} through rclone");
    }
    let listed = rclone_text(&["lsf", "-R", "--files-only", "gw:work/rc"]);
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    let mut want: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    want.sort();
    assert_eq!(names, want);
    rclone(&["check", src.to_str().unwrap(), "gw:work/rc"]);
    assert!(rclone(&["cat", &format!("gw:work/rc/{}", files[3].0)]) == files[3].1);
    let got = dir.path().join("rc-back");
    rclone(&["copy", "gw:work/rc", got.to_str().unwrap()]);
    for (rel, bytes) in &files {
        assert!(std::fs::read(got.join(rel)).unwrap() == *bytes, "{rel} back through rclone");
    }
    rclone(&["delete", "gw:work/rc"]);
    assert!(rclone_text(&["lsf", "-R", "--files-only", "gw:work/rc"]).trim().is_empty());
}

#[test]
fn a_gateway_put_is_readable_before_persisted_and_survives_kill_9() {
    if !require(&["boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = serve(dir.path(), "3s");
    let d = data(11, 3 << 20);
    let src = dir.path().join("obj.src");
    std::fs::write(&src, &d).unwrap();
    // Until it is persisted the object keeps the ETag its PUT answered. A
    // multipart upload is left open with two parts staged.
    let program = format!(
        "u = s3.create_multipart_upload(Bucket='work', Key='out/multi.bin')['UploadId']\n\
         s3.upload_part(Bucket='work', Key='out/multi.bin', UploadId=u, PartNumber=1, Body=b'a' * (5 << 20))\n\
         s3.upload_part(Bucket='work', Key='out/multi.bin', UploadId=u, PartNumber=2, Body=b'b' * 1000)\n\
         e = s3.put_object(Bucket='work', Key='out/part-0.bin', Body=open('{}', 'rb').read())['ETag']\n\
         assert s3.head_object(Bucket='work', Key='out/part-0.bin')['ETag'] == e\n\
         assert code(lambda: s3.get_object(Bucket='work', Key='out/part-0.bin', IfNoneMatch=e)) == '304'\n\
         print('put ok', u)\n",
        src.display()
    );
    let out = gw.python(&program);
    assert!(out.contains("put ok"), "{out}");
    let upload = out.split_whitespace().last().unwrap().to_string();
    // Acknowledged: readable at once through the engine, not yet in the slow store.
    let c = gw.srv.client();
    assert!(c.read_file("/work/out/part-0.bin").unwrap() == d, "readable through the client before persisted");
    let out = run(&["cat", "--socket", &gw.srv.socket, "/work/out/part-0.bin"]);
    assert!(out.status.success() && out.stdout == d, "stoker cat before persisted");
    assert!(c.engine_stats().unwrap().persist_pending_files >= 1);
    drop(c);
    let Gw { srv, .. } = gw;
    srv.kill9();
    assert!(!dir.path().join("ufs/out/part-0.bin").exists(), "the 3 s store cannot have it yet");

    let gw = serve(dir.path(), "10ms");
    let c = gw.srv.client();
    assert!(c.read_file("/work/out/part-0.bin").unwrap() == d, "after kill -9 and restart");
    let out = gw.python("print(hashlib.sha256(s3.get_object(Bucket='work', Key='out/part-0.bin')['Body'].read()).hexdigest())\n");
    let want: String = {
        let out = Command::new("sha256sum").arg(&src).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(out.trim(), want, "through the gateway after restart");
    // The staged parts survived too: the upload completes after the restart.
    let program = format!(
        "u = '{upload}'\n\
         parts = s3.list_parts(Bucket='work', Key='out/multi.bin', UploadId=u)['Parts']\n\
         assert [(p['PartNumber'], p['Size']) for p in parts] == [(1, 5 << 20), (2, 1000)], parts\n\
         s3.complete_multipart_upload(Bucket='work', Key='out/multi.bin', UploadId=u,\n    \
             MultipartUpload={{'Parts': [{{'PartNumber': p['PartNumber'], 'ETag': p['ETag']}} for p in parts]}})\n\
         assert s3.get_object(Bucket='work', Key='out/multi.bin')['Body'].read() == b'a' * (5 << 20) + b'b' * 1000\n\
         print('multipart ok')\n"
    );
    assert!(gw.python(&program).contains("multipart ok"));
    let out = run(&["sync", "--socket", &gw.srv.socket, "/work/out"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dir.path().join("ufs/out/part-0.bin")).unwrap() == d, "byte-exact in under storage");
    assert_eq!(std::fs::metadata(dir.path().join("ufs/out/multi.bin")).unwrap().len(), (5 << 20) + 1000);
    assert_eq!(c.engine_stats().unwrap().persist_pending_files, 0);
}

#[test]
fn without_credentials_unsigned_requests_work_and_signed_ones_are_refused() {
    if !require(&["boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = serve_with(dir.path(), "0ms", false, &[]);
    let out = gw.python(
        r#"
from botocore import UNSIGNED
anon = boto3.client('s3', endpoint_url=ENDPOINT, region_name='us-east-1',
    config=Config(signature_version=UNSIGNED, s3={'addressing_style': 'path'}, retries={'max_attempts': 1}))
anon.put_object(Bucket='work', Key='open.txt', Body=b'no keys needed')
assert anon.get_object(Bucket='work', Key='open.txt')['Body'].read() == b'no keys needed'
assert code(lambda: s3.get_object(Bucket='work', Key='open.txt')) == 'NotImplemented'
print('anon ok')
"#,
    );
    assert!(out.contains("anon ok"), "{out}");
    assert_eq!(gw.srv.client().read_file("/work/open.txt").unwrap(), b"no keys needed");
}

#[test]
fn refused_gateway_starts_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let sock = dir.path().join("s.sock").to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.path().join("ufs")).unwrap();
    let m = format!("work=file://{}", dir.path().join("ufs").display());
    let one_line = |args: &[&str], want: &str| {
        let mut all = vec!["serve", "--cache-dir", cache.to_str().unwrap(), "--socket", &sock, "--shards", "1", "--mount", &m];
        all.extend_from_slice(args);
        let out = run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("s3cr3t"), "a secret in an error: {err}");
    };
    one_line(&["--s3", "0.0.0.0:0"], "loopback");
    one_line(&["--s3", "nowhere"], "bad address");
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "key-without-secret s3cr3t\n").unwrap();
    one_line(&["--s3", "127.0.0.1:0", "--s3-credentials", creds.to_str().unwrap()], "line 1: expected ACCESS_KEY:SECRET_KEY");
    one_line(&["--s3", "127.0.0.1:0", "--s3-credentials", "/does/not/exist"], "--s3-credentials /does/not/exist");
    one_line(&["--s3-credentials", creds.to_str().unwrap()], "need --s3");
    // A taken port: refused after the engine came up, which then stops.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    one_line(&["--s3", &addr], "--s3 127.0.0.1");
}

#[test]
fn a_gateway_put_reads_through_fuse_and_the_python_client_before_it_is_persisted() {
    if !require(&["boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A 6 s store; listings, once read, are kept (sync=never), so what
    // follows the PUT asks the store nothing while its persist takes 6 s.
    let gw = serve_with(dir.path(), "6s", true, &["--mount-opt", "work:sync=never"]);
    let py = python_with_binding();
    let mp = dir.path().join("mnt");
    let _fuse = FuseMount::start(&["--socket", &gw.srv.socket, "/work"], &mp);
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), 0);
    let d = data(12, 1 << 20);
    let src = dir.path().join("obj.src");
    std::fs::write(&src, &d).unwrap();
    let out = gw.python(&format!("s3.put_object(Bucket='work', Key='fresh.bin', Body=open('{}', 'rb').read())\nprint('put ok')\n", src.display()));
    assert!(out.contains("put ok"), "{out}");
    wait_for("fresh.bin in the mount", Duration::from_secs(10), || mp.join("fresh.bin").exists());
    assert!(std::fs::read(mp.join("fresh.bin")).unwrap() == d, "readable through FUSE before persisted");
    if let Some((_, py)) = py {
        let script = format!("import stoker, sys\nsys.stdout.buffer.write(stoker.Client('{}').read('/work/fresh.bin'))\n", gw.srv.socket);
        let out = Command::new(py).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "python client: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == d, "readable through the Python client before persisted");
    }
    assert!(!dir.path().join("ufs/fresh.bin").exists(), "the 6 s store cannot have it yet");
    assert!(gw.srv.client().engine_stats().unwrap().persist_pending_files >= 1);
    let out = run(&["sync", "--socket", &gw.srv.socket, "/work"]);
    assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dir.path().join("ufs/fresh.bin")).unwrap() == d, "byte-exact in under storage after sync");
}
